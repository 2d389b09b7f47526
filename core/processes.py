"""Child processes that must not outlive the process that started them.

The LLM server, HAProxy, cluster workers and the bench's servers and callers are children. A
parent that is killed (SIGKILL, an OOM kill, a `timeout` or `pkill` of the bench) runs no cleanup,
and its children would go on holding ports, memory and CPU: the kernel's PR_SET_PDEATHSIG sends
them SIGTERM instead. Linux only, which is where this server runs.

Why a wrapper command and not a `preexec_fn`: a `preexec_fn` makes Python fork() instead of
vfork(), and fork() runs every library's atfork handlers in the child. gRPC's (loaded with Ray,
the model tier) restarts its poller thread there; the child then closes the inherited fds before
exec and gRPC aborts it (SIGABRT, "epoll_wait error: Bad file descriptor"): a llama-server restart
in a process that had used Ray died before it ran. Without a `preexec_fn` the child is vforked, no
handler runs, and the wrapper (a bare Python, ~20 ms once per launch) sets the signal and execs.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h
SIGTERM = 15

# argv: parent pid, then the command. -I -S: no site, no user paths, no PYTHON* variables: nothing
# of ours runs before the exec.
_EXEC = (
    "import ctypes, os, sys\n"
    f"ctypes.CDLL(None).prctl({PR_SET_PDEATHSIG}, {SIGTERM})\n"
    "if os.getppid() != int(sys.argv[1]): os._exit(1)  # the parent died before prctl took effect\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n")


def dying_with_parent(command: Sequence[str | Path]) -> list[str]:
    """`command` wrapped so that the child gets SIGTERM when this process dies. Spawn it from a
    long-lived thread (the event loop's or the main one): the signal follows the thread that
    started the child, never a short-lived worker thread. The child's pid is the command's (the
    wrapper execs it)."""
    if not command:
        raise ValueError("an empty command")
    return [sys.executable, "-I", "-S", "-c", _EXEC, str(os.getpid()), *map(str, command)]
