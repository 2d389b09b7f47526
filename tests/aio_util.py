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
