"""Small asyncio helpers shared by tests."""
from __future__ import annotations

import asyncio

import pytest


async def cancel_after_first(stream, timeout: float) -> None:
    """Iterate `stream` in a task, cancel the task once the first item arrived, and check that
    the cancellation went through (the stream did not swallow it)."""
    got_one = asyncio.Event()

    async def consume():
        async for _ in stream:
            got_one.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_one.wait(), timeout)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def process_gone(pid: int) -> None:
    """Return once process `pid` has exited (gone, or a zombie an init may never reap)."""
    from pathlib import Path

    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state == "Z":
            return
        await asyncio.sleep(0.1)


async def child_dies_with_killed_parent(script: str, timeout: float = 120.0, is_child=None) -> None:
    """Run python `script` (it prints a child's pid and waits), SIGKILL it, and wait for the child
    to go: a killed parent runs no cleanup, so only PR_SET_PDEATHSIG (core/processes.py) can take
    it down. `is_child(pid)` checks what the child is first."""
    import os
    import signal
    import sys
    from pathlib import Path

    parent = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE,
                                                  cwd=str(Path(__file__).resolve().parents[1]))
    child = int(await asyncio.wait_for(parent.stdout.readline(), timeout))
    try:
        assert Path(f"/proc/{child}").exists() and (is_child is None or is_child(child))
        parent.kill()
        await parent.wait()
        await asyncio.wait_for(process_gone(child), timeout)
    finally:  # never leave a process behind, even when an assertion fails
        for pid in (child, parent.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


async def serve_app(app) -> tuple[object, str]:
    """Start an aiohttp `app` on a free loopback port: (its runner, to clean up; its base URL)."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"
