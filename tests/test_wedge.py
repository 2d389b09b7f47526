"""core.wedge: a batch that never returns is redone on a new worker; the lane goes on serving."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import thread as futures_thread

from core.scheduler import Scheduler, Ticket
from core.wedge import WedgeGuard, abandon

WAIT_S = 60  # bounds a broken test; never reached when it works


class HangsOnce:
    """A stage whose first model call hangs until released; later calls answer at once."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.release = threading.Event()
        self.calls: list[tuple[str, list]] = []
        self.replaced: list[ThreadPoolExecutor] = []

    def batch(self, items):
        self.calls.append((threading.current_thread().name, list(items)))
        if len(self.calls) == 1:
            assert self.release.wait(WAIT_S)
            return ["late " + item for item in items]
        return ["done " + item for item in items]

    def replace(self) -> ThreadPoolExecutor:
        self.replaced.append(self.executor)
        abandon(self.executor)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model-new")
        return self.executor


async def test_a_wedged_batch_is_redone_on_a_new_worker_and_the_lane_goes_on():
    stage = HangsOnce()
    guard = WedgeGuard(lambda items: 0.3, stage.replace)
    lane = Scheduler().lane("asr", 1, executor=stage.executor, batch_fn=stage.batch, max_batch=4, guard=guard)
    try:
        first = await asyncio.wait_for(asyncio.gather(lane.submit("a", Ticket("s1")), lane.submit("b", Ticket("s2"))),
                                       WAIT_S)
        assert first == ["done a", "done b"]  # "a" answered by the new worker, "b" queued behind it
        assert [items for _, items in stage.calls] == [["a"], ["a"], ["b"]]
        assert stage.calls[0][0].startswith("model_") and stage.calls[1][0].startswith("model-new")
        assert lane.counters["wedged_workers"] == 1 and lane.executor is stage.executor
        assert await asyncio.wait_for(lane.submit("c", Ticket("s1")), WAIT_S) == "done c"
        assert lane.running == 0 and lane.oldest_running_s() == 0.0
        # The wedged thread left the registry Python joins at exit (a deploy's SIGTERM would hang).
        assert not set(stage.replaced[0]._threads) & set(futures_thread._threads_queues)
    finally:
        stage.release.set()
        stage.executor.shutdown(wait=True)
        for old in stage.replaced:
            old.shutdown(wait=True)
    assert [items for _, items in stage.calls] == [["a"], ["a"], ["b"], ["c"]]  # the late result went nowhere


async def test_a_healthy_slow_batch_within_its_limit_is_not_replaced():
    gate = threading.Event()
    pool = ThreadPoolExecutor(1)
    guard = WedgeGuard(lambda items: 30.0, lambda: ThreadPoolExecutor(1))

    def slow(items):
        assert gate.wait(WAIT_S)
        return list(items)

    lane = Scheduler().lane("tts", 1, executor=pool, batch_fn=slow, guard=guard)
    job = asyncio.create_task(lane.submit("x"))
    await asyncio.sleep(0.3)
    gate.set()
    assert await asyncio.wait_for(job, WAIT_S) == "x"
    assert guard.replaced == 0 and "wedged_workers" not in lane.counters and lane.executor is pool
    pool.shutdown()


async def test_after_the_last_replacement_the_lane_waits_and_shows_as_stuck():
    """Each replacement leaks a thread and a model copy, so they are bounded; then the lane
    waits as before and /healthz reports it (Scheduler.stuck)."""
    gate = threading.Event()
    pools: list[ThreadPoolExecutor] = [ThreadPoolExecutor(1)]

    def replace():
        pools.append(ThreadPoolExecutor(1))
        return pools[-1]

    def hangs(items):
        assert gate.wait(WAIT_S)
        return list(items)

    scheduler = Scheduler()
    guard = WedgeGuard(lambda items: 0.2, replace, max_replacements=2)
    lane = scheduler.lane("asr", 1, executor=pools[0], batch_fn=hangs, guard=guard)
    job = asyncio.create_task(lane.submit("x"))
    try:
        await asyncio.sleep(1.2)
        assert guard.replaced == 2 and len(pools) == 3 and not job.done()
        assert set(scheduler.stuck(after_s=0.3)) == {"asr"}
    finally:
        gate.set()
    assert await asyncio.wait_for(job, WAIT_S) == "x"
    assert scheduler.stuck(after_s=0.0) == {}
    for pool in pools:
        pool.shutdown(wait=True)
