"""Child processes that must not outlive the process that started them.

The LLM server, HAProxy, cluster workers and the bench's servers and callers are children. A
parent that is killed (SIGKILL, an OOM kill, a `timeout` or `pkill` of the bench) runs no cleanup,
and its children would go on holding ports, memory and CPU: the kernel's PR_SET_PDEATHSIG sends
them SIGTERM instead. Linux only, which is where this server runs.
"""
from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int | None = None) -> Callable[[], None]:
    """A `preexec_fn` for subprocess: SIGTERM the child when `parent` (default: this process)
    dies. The signal follows the thread that forked, so spawn from a long-lived thread (the
    event loop's or the main one), never from a short-lived worker thread."""
    parent = os.getpid() if parent is None else parent
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:  # runs in the child between fork and exec
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec
