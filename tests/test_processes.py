"""core.processes: children die with a parent that is killed without cleaning up (SIGKILL, a
`timeout`, `pkill` of the bench)."""
from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 120  # bounds a broken test; a working one takes a second or a few


async def _gone(pid: int) -> None:
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state == "Z":  # dead, waiting for an init that may never reap it
            return
        await asyncio.sleep(0.1)


async def _child_of_killed_parent(script: str) -> None:
    """Run `script` (it prints a child's pid), SIGKILL it, and wait for the child to go."""
    parent = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE,
                                                  cwd=str(ROOT))
    line = await asyncio.wait_for(parent.stdout.readline(), WAIT_S)
    child = int(line)
    assert Path(f"/proc/{child}").exists()
    parent.kill()
    await parent.wait()
    try:
        await asyncio.wait_for(_gone(child), WAIT_S)
    finally:  # never leave a process behind, even when the assertion fails
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


async def test_a_child_dies_with_its_killed_parent():
    await _child_of_killed_parent(
        "import subprocess, time\n"
        "from core.processes import die_with_parent\n"
        "p = subprocess.Popen(['sleep', '600'], preexec_fn=die_with_parent())\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(600)\n")


async def test_a_killed_bench_leaves_no_server_behind():
    """The bench's server runs in its own session (so that stop() takes its children along); a
    bench killed by `timeout` or `pkill` never calls stop(), and the server must still go."""
    await _child_of_killed_parent(
        "import asyncio\n"
        "from bench.server import ServerProcess\n"
        "async def main():\n"
        "    server = ServerProcess('configs/fake.yaml')\n"
        "    await server.start()\n"
        "    print(server.pid, flush=True)\n"
        "    await asyncio.sleep(600)\n"
        "asyncio.run(main())\n")
