"""core.scheduler: priorities, dropping discarded work, freeing workers, batching."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import time

from core.scheduler import (
    LATER_S, Kind, Lane, Scheduler, Ticket, WorkDropped, current_ticket, needed_at, ticket_now, working_for,
)


async def _hold(lane: Lane, ticket: Ticket, order: list[str], name: str, release: asyncio.Event) -> None:
    async with lane.slot(ticket):
        order.append(name)
        await release.wait()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_final_before_speculative_before_warmup_then_by_deadline():
    lane = Lane("llm", workers=1)
    order: list[str] = []
    gate = asyncio.Event()
    blocker = asyncio.create_task(_hold(lane, Ticket("a"), order, "blocker", gate))
    await _settle()
    now = 1000.0
    waiting = {
        "warm": Ticket("b", Kind.WARMUP, now),
        "spec-late": Ticket("c", Kind.SPECULATIVE, now + 2),
        "spec-early": Ticket("d", Kind.SPECULATIVE, now + 1),
        "final": Ticket("e", Kind.FINAL, now + 5),
    }
    done = asyncio.Event()
    done.set()
    tasks = [asyncio.create_task(_hold(lane, t, order, name, done)) for name, t in waiting.items()]
    await _settle()
    assert lane.snapshot()["queued"] == {"final": 1, "speculative": 2, "warmup": 1}
    gate.set()
    await asyncio.gather(blocker, *tasks)
    assert order == ["blocker", "final", "spec-early", "spec-late", "warm"]


async def _hold_needed(lane: Lane, ticket: Ticket, when: float | None, order: list[str], name: str) -> None:
    needed_at.set(when)  # this task's context only, as the clause pipeline's speaker sets it
    async with lane.slot(ticket):
        order.append(name)


async def test_work_needed_later_waits_behind_speculative_work():
    """A reply's next sentence while seconds of its audio are still to play goes after another
    caller's speculative first words; work needed soon keeps its kind's place."""
    lane = Lane("tts", workers=1)
    order: list[str] = []
    gate = asyncio.Event()
    blocker = asyncio.create_task(_hold(lane, Ticket("a"), order, "blocker", gate))
    await _settle()
    now = time.monotonic()
    waiting = {
        "final-in-4s": (Ticket("b", Kind.FINAL, now - 10), now + 4),
        "final-in-3s": (Ticket("c", Kind.FINAL, now - 10), now + 3),
        "final-soon": (Ticket("d", Kind.FINAL, now - 10), now + LATER_S / 2),
        "spec-first-words": (Ticket("e", Kind.SPECULATIVE, now + 0.4), None),
        "warm": (Ticket("f", Kind.WARMUP, now), None),
    }
    tasks = [asyncio.create_task(_hold_needed(lane, t, when, order, name)) for name, (t, when) in waiting.items()]
    await _settle()
    assert lane.snapshot()["queued"] == {"final": 3, "speculative": 1, "warmup": 1}  # still FINAL work
    gate.set()
    await asyncio.gather(blocker, *tasks)
    assert order == ["blocker", "final-soon", "spec-first-words", "final-in-3s", "final-in-4s", "warm"]


async def test_work_queued_before_it_is_needed_is_no_backlog():
    """Admission's backlog (a finished turn waiting for a model) counts a later sentence's wait only
    from LATER_S before its audio is needed: queued early by design, it is not a caller waiting."""
    scheduler = Scheduler()
    lane = scheduler.lane("tts", workers=1)
    gate = asyncio.Event()
    blocker = asyncio.create_task(_hold(lane, Ticket("a"), [], "blocker", gate))
    await _settle()
    later = asyncio.create_task(_hold_needed(lane, Ticket("b", Kind.FINAL, 0.0), time.monotonic() + 30, [], "later"))
    await asyncio.sleep(0.2)
    assert lane.snapshot()["queued"]["final"] == 1 and scheduler.final_backlog_ms() == 0.0
    now_needed = asyncio.create_task(_hold_needed(lane, Ticket("c", Kind.FINAL, 0.0), None, [], "now"))
    await asyncio.sleep(0.2)
    assert scheduler.final_backlog_ms() >= 150  # this one is waited for
    gate.set()
    await asyncio.gather(blocker, later, now_needed)
    assert sum(w >= 0.15 for w in lane.waits[Kind.FINAL]) == 1  # "now"; "later" (queued 0.4 s) waited 0


async def test_committed_speculation_moves_up_and_dropped_work_never_runs():
    lane = Lane("asr", workers=1)
    order: list[str] = []
    gate = asyncio.Event()
    blocker = asyncio.create_task(_hold(lane, Ticket("a"), order, "blocker", gate))
    await _settle()
    other = Ticket("b", Kind.SPECULATIVE, 1.0)
    mine = Ticket("c", Kind.SPECULATIVE, 2.0)
    gone = Ticket("d", Kind.SPECULATIVE, 0.5)
    done = asyncio.Event()
    done.set()
    t_other = asyncio.create_task(_hold(lane, other, order, "other", done))
    t_mine = asyncio.create_task(_hold(lane, mine, order, "mine", done))
    t_gone = asyncio.create_task(_hold(lane, gone, order, "gone", done))
    await _settle()
    mine.commit()  # the user stopped: this speculation is the reply now
    gone.drop()  # the user went on: this speculation's input is superseded
    with pytest.raises(WorkDropped):
        await t_gone
    gate.set()
    await asyncio.gather(blocker, t_other, t_mine)
    assert order == ["blocker", "mine", "other"]
    assert lane.dropped == 1 and lane.jobs == 3


async def test_cancelling_the_holder_frees_the_worker_at_once():
    lane = Lane("llm", workers=1)
    entered = asyncio.Event()

    async def stream_forever():
        async with lane.slot(Ticket("a")):
            entered.set()
            await asyncio.Event().wait()  # an LLM stream that would go on

    holder = asyncio.create_task(stream_forever())
    await entered.wait()
    assert lane.running == 1
    next_one = asyncio.create_task(_hold(lane, Ticket("b"), [], "b", asyncio.Event()))
    await _settle()
    assert lane.snapshot()["queued"]["final"] == 1
    holder.cancel()
    await asyncio.gather(holder, return_exceptions=True)
    await _settle()
    assert lane.running == 1 and not lane._queue  # the waiting job got the worker
    next_one.cancel()
    await asyncio.gather(next_one, return_exceptions=True)
    assert lane.running == 0


async def test_a_cancelled_waiter_leaves_the_queue():
    lane = Lane("tts", workers=1)
    gate = asyncio.Event()
    blocker = asyncio.create_task(_hold(lane, Ticket("a"), [], "a", gate))
    await _settle()
    waiter = asyncio.create_task(_hold(lane, Ticket("b"), [], "b", gate))
    await _settle()
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert lane._queue == []
    gate.set()
    await blocker
    assert lane.jobs == 1


async def test_run_uses_the_executor_and_counts_busy_time():
    pool = ThreadPoolExecutor(1, thread_name_prefix="tts-pool")
    lane = Lane("tts", workers=1, executor=pool)
    doubled, thread = await lane.run(lambda x: (x * 2, threading.current_thread().name), 21)
    assert doubled == 42 and thread.startswith("tts-pool")
    snap = lane.snapshot()
    assert snap["jobs"] == 1 and snap["running"] == 0 and snap["wait_ms"]["final"]["n"] == 1
    pool.shutdown()


async def test_a_call_that_never_returns_shows_as_a_stuck_lane():
    """A wedged worker thread (one model call that does not return) is what /healthz reports;
    a lane that only holds places on a batching server (serial=False) never counts."""
    pool = ThreadPoolExecutor(1)
    scheduler = Scheduler()
    asr = scheduler.lane("asr", 1, executor=pool)
    llm = scheduler.lane("llm", 2, serial=False)
    gate = threading.Event()
    wedged = asyncio.create_task(asr.run(gate.wait))
    try:
        async with llm.slot():
            await asyncio.sleep(0.3)
            assert set(scheduler.stuck(after_s=0.2)) == {"asr"}
            assert asr.snapshot()["oldest_running_s"] >= 0.2
            assert scheduler.stuck(after_s=60.0) == {}
    finally:
        gate.set()  # the thread must end even when an assertion failed
    await wedged
    assert scheduler.stuck(after_s=0.0) == {} and asr.oldest_running_s() == 0.0
    pool.shutdown()


async def test_batches_group_by_key_and_keep_priority():
    calls: list[list[str]] = []
    release = threading.Event()

    def batch_fn(items):
        calls.append(list(items))
        release.wait(5)
        return [item.upper() for item in items]

    pool = ThreadPoolExecutor(1)
    lane = Lane("asr", workers=1, executor=pool, batch_fn=batch_fn, max_batch=3)
    first = asyncio.create_task(lane.submit("first", Ticket("a"), group=10))
    await _settle()
    jobs = [asyncio.create_task(lane.submit(item, Ticket(s, kind), group=g))
            for item, s, kind, g in [("w1", "b", Kind.WARMUP, 10), ("f1", "c", Kind.FINAL, 10),
                                      ("f2", "d", Kind.FINAL, 20), ("s1", "e", Kind.SPECULATIVE, 10),
                                      ("s2", "f", Kind.SPECULATIVE, 10)]]
    await _settle()
    release.set()
    assert await first == "FIRST"
    assert await asyncio.gather(*jobs) == ["W1", "F1", "F2", "S1", "S2"]
    # After "first": the most urgent job (f1) with the next most urgent of its window group, up to 3;
    # then f2 (another window size) alone; then what is left of group 10.
    assert calls == [["first"], ["f1", "s1", "s2"], ["f2"], ["w1"]]
    assert lane.snapshot()["batch_size_mean"] == 1.5
    pool.shutdown()


async def test_a_shared_job_runs_for_its_most_urgent_ticket_and_goes_with_the_last():
    pool = ThreadPoolExecutor(1)
    gate = threading.Event()
    lane = Lane("asr", workers=1, executor=pool, batch_fn=lambda items: (gate.wait(5), list(items))[1])
    blocker = asyncio.create_task(lane.submit("x", Ticket("a"), group=1))
    await _settle()
    spec = Ticket("b", Kind.SPECULATIVE)
    job = lane.enqueue("y", spec, group=1)
    assert lane.snapshot()["queued"]["speculative"] == 1
    final = Ticket("b", Kind.FINAL)
    job.add(final)
    assert lane.snapshot()["queued"]["final"] == 1
    job.release(final)
    spec.drop()
    assert lane.snapshot()["queued"] == {"final": 0, "speculative": 0, "warmup": 0} and lane.dropped == 1
    with pytest.raises(WorkDropped):
        await lane.result(job, spec)
    gate.set()
    assert await blocker == "x"
    pool.shutdown()


async def test_batch_errors_reach_every_waiter():
    lane = Lane("asr", workers=1, batch_fn=lambda items: 1 / 0, max_batch=2)
    with pytest.raises(ZeroDivisionError):
        await lane.submit("a", Ticket())
    assert lane.running == 0


async def test_the_ticket_travels_with_the_task():
    ticket = Ticket("s1", Kind.SPECULATIVE)
    assert ticket_now().kind is Kind.FINAL  # outside any reply: anonymous, urgent
    with working_for(ticket):
        seen = await asyncio.create_task(asyncio.sleep(0, result=None)) or current_ticket.get()
    assert seen is ticket and current_ticket.get() is None


def test_scheduler_names_each_lane_once():
    sched = Scheduler()
    first, second = sched.lane("llm", 1), sched.lane("llm", 2)
    assert (first.name, second.name) == ("llm", "llm.2") and set(sched.snapshot()) == {"llm", "llm.2"}


async def test_dropping_a_ticket_purges_all_its_queued_jobs_even_after_one_started():
    lane = Lane("tts", workers=1)
    spec = Ticket("a", Kind.SPECULATIVE)
    gate = asyncio.Event()
    first = asyncio.create_task(_hold(lane, spec, [], "first", gate))  # runs at once
    await _settle()
    second = asyncio.create_task(_hold(lane, spec, [], "second", gate))  # queued behind it
    await _settle()
    spec.drop()
    with pytest.raises(WorkDropped):
        await second
    gate.set()
    await first
    assert lane.dropped == 1 and lane.jobs == 1


async def test_an_async_batch_is_cancelled_when_its_last_waiter_leaves():
    """A remote call (async batch_fn) that nobody waits for any more is cancelled (which cancels
    the remote request); while one of two waiters is left it runs on for that one."""
    started, cancelled = asyncio.Event(), asyncio.Event()
    release = asyncio.Event()

    async def remote(items):
        started.set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return [f"done {item}" for item in items]

    lane = Lane("asr", 2, batch_fn=remote, serial=False)
    first, second = Ticket("a"), Ticket("a", Kind.SPECULATIVE)
    job = lane.enqueue("x", first)
    job.add(second)
    waiter1 = asyncio.create_task(lane.result(job, first))
    waiter2 = asyncio.create_task(lane.result(job, second))
    await asyncio.wait_for(started.wait(), 5)
    waiter2.cancel()
    await asyncio.gather(waiter2, return_exceptions=True)
    await asyncio.sleep(0.05)
    assert not cancelled.is_set() and lane.running == 1  # the other waiter still wants it
    waiter1.cancel()
    await asyncio.gather(waiter1, return_exceptions=True)
    await asyncio.wait_for(cancelled.wait(), 5)
    await asyncio.sleep(0)
    assert lane.running == 0  # the place is free again
    # and the lane still works
    release.set()
    assert await asyncio.wait_for(lane.submit("y", Ticket("b")), 5) == "done y"


async def test_sessions_at_work_counts_queued_and_running_jobs_of_every_lane():
    """Whisper asks this from its worker thread to know whether it has the box to itself."""
    scheduler = Scheduler()
    llm, tts = scheduler.lane("llm", 1), scheduler.lane("tts", 1)
    assert scheduler.sessions_at_work() == set()
    gate = asyncio.Event()
    order: list[str] = []
    running = asyncio.create_task(_hold(llm, Ticket("a"), order, "a", gate))
    queued = asyncio.create_task(_hold(llm, Ticket("b", Kind.WARMUP), order, "b", gate))
    other_lane = asyncio.create_task(_hold(tts, Ticket("c"), order, "c", gate))
    await _settle()
    assert order == ["a", "c"]  # b waits behind a
    assert scheduler.sessions_at_work() == {"a", "b", "c"}
    assert await asyncio.to_thread(scheduler.sessions_at_work) == {"a", "b", "c"}  # from a thread too
    gate.set()
    await asyncio.gather(running, queued, other_lane)
    assert scheduler.sessions_at_work() == set()
    assert scheduler.sessions_at_work(within_s=60) == {"a", "b", "c"}  # at work a moment ago
    await asyncio.sleep(0.05)
    assert scheduler.sessions_at_work(within_s=0.01) == set()
