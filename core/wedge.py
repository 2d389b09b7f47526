"""A model call that never returns: give up its worker thread and do the work on a new one.

In a few 4-caller benchmark runs in twenty the one Whisper worker stopped returning; every
caller's turn then queued behind it and the server refused everyone until it was restarted. A
thread cannot be stopped, but the work can be done again elsewhere: a lane with a `WedgeGuard`
waits for a batch at most `time_limit(items)` (far longer than a healthy run of that work), then
logs where the stuck thread is, asks its stage for a new worker (`replace()`: a new thread, and a
new copy of the model, since the old one may be what hangs) and runs the same batch there. The
waiters see a late result, not none. The wedged thread is left behind (it ends if its call ever
returns; its result is ignored); after `max_replacements` the guard stops replacing (each one
leaks a thread and a model copy) and the lane waits as before, which `/healthz` reports as stuck
(core.scheduler.Scheduler.stuck).

What the stack dump found (docs/benchmarks.md): that wedge was numpy's OpenBLAS thread pool, which
is process-wide, so every new worker stood still at the same line; core/blas.py removes it. The
guard stays for hangs local to a model copy, and for the stack it logs.
"""
from __future__ import annotations

import asyncio
import logging
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from concurrent.futures import thread as _futures_thread
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.scheduler import Job, Lane

log = logging.getLogger(__name__)


class WedgeGuard:
    def __init__(self, time_limit: Callable[[Sequence[Any]], float], replace: Callable[[], Executor],
                 max_replacements: int = 3) -> None:
        self.time_limit = time_limit  # items -> seconds no healthy run of them takes
        self.replace = replace  # gives up the wedged worker; returns the executor to use from now on
        self.max_replacements = max_replacements
        self.replaced = 0

    async def run(self, lane: "Lane", batch: Sequence["Job"]) -> Sequence[Any]:
        """`lane.batch_fn` over the batch's items in `lane.executor`, again on a new worker if
        the call outlives its time limit."""
        items = [job.item for job in batch]
        loop = asyncio.get_running_loop()
        while True:
            started = time.monotonic()
            call = loop.run_in_executor(lane.executor, lane.batch_fn, items)
            if self.replaced >= self.max_replacements:
                return await call
            limit = self.time_limit(items)
            try:
                return await asyncio.wait_for(asyncio.shield(call), limit)
            except TimeoutError:
                call.add_done_callback(_ignore_late_result)
            self.replaced += 1
            lane.counters["wedged_workers"] = self.replaced
            log.error("%s lane: a model call of %d item(s) has run %.1f s (no healthy one takes %.1f s); "
                      "giving up its worker thread and running the work again on a new one (%d of %d). "
                      "Where its threads are:\n%s", lane.name, len(items), time.monotonic() - started, limit,
                      self.replaced, self.max_replacements, _stacks(lane.executor))
            lane.executor = self.replace()
            for job in batch:  # the stuck-lane clock (Scheduler.stuck) restarts with the new worker
                job.started = time.monotonic()


def _stacks(executor: Executor) -> str:
    """The Python stacks of an executor's threads: where a wedged call stands (this is how the
    OpenBLAS hang was found)."""
    frames = sys._current_frames()
    return "\n".join(f"{t.name}:\n" + "".join(traceback.format_stack(frames[t.ident]))
                     for t in getattr(executor, "_threads", ()) if t.ident in frames) or "(unknown)"


def _ignore_late_result(call: asyncio.Future) -> None:
    if not call.cancelled():
        call.exception()  # retrieved, so a late failure is not logged as never retrieved


def abandon(executor: ThreadPoolExecutor) -> None:
    """Let go of an executor whose thread is wedged: no new work, and the process may exit without
    it. Python joins every ThreadPoolExecutor thread at exit, which for a call that never returns
    would hang a deploy's SIGTERM forever; so the thread leaves that registry (a private one:
    if it is gone in a later Python, the exit simply waits as before)."""
    executor.shutdown(wait=False, cancel_futures=True)
    registry = getattr(_futures_thread, "_threads_queues", {})
    for thread in list(getattr(executor, "_threads", ())):
        registry.pop(thread, None)
