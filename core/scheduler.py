"""One scheduler for the model work of every session: who runs next on the ASR, LLM and TTS.

A 2-core box serves several calls only if the work that a caller is waiting for goes first.
Every piece of model work is done for a `Ticket` — one turn or reply of one session — that says
how urgent it is:

  FINAL        the user finished the turn (or a client asked for a reply): someone is waiting
  SPECULATIVE  started at a pause; thrown away if the user goes on (Step-Audio's speculation)
  WARMUP       best effort: LLM prefix warm-up, transcription ahead of the pause

and by when its result is needed (`deadline`, monotonic seconds). A `Lane` is one kind of model
with a fixed number of workers (Whisper's one batch at a time, the LLM server's slots, piper's
threads); its queue is served by (kind, deadline, arrival). A job may say its result is needed
later than its ticket's deadline (`needed_at`: a reply's next sentence while seconds of its audio
are still to play); more than `LATER_S` ahead, it waits behind speculative work (the next
caller's first words go first). Tickets change while work is queued: a committed speculation
becomes FINAL (its queued work moves up), a discarded one is dropped (its queued work is removed
before it runs: `WorkDropped` for whoever waited). A job several tickets wait for (the same audio
transcribed for a speculation and for the end of turn) runs for the most urgent of them.

Cancelling a waiter removes its job from the queue; cancelling the holder of a worker frees the
worker at once (an LLM stream is closed: the server stops generating). Work already running in a
thread cannot be stopped mid-call, so lanes keep those calls short (one Whisper batch, one piper
sentence), a cancelled caller just stops waiting for it, and one that never returns is redone on
a new worker (core/wedge.py). An async `batch_fn` (a remote model call: ray_whisper.py) is
cancelled once nobody waits for it, which cancels the remote request.

The stages find their ticket in a context variable (`current_ticket`): the controller runs each
reply in a task that carries its ticket, so the stages' Protocols need no extra argument.
"""
from __future__ import annotations

import asyncio
import contextvars
import enum
import inspect
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from core.lane_metrics import lane_snapshot, percentile
from core.wedge import WedgeGuard


class Kind(enum.IntEnum):
    FINAL = 0
    SPECULATIVE = 1
    WARMUP = 2


class WorkDropped(Exception):
    """The work was dropped before it ran: every ticket that wanted it was discarded."""


class Ticket:
    """What model work is for: one turn or reply of one session. Mutable while work is queued."""

    def __init__(self, session: str = "", kind: Kind = Kind.FINAL, deadline: float | None = None) -> None:
        self.session = session
        self.kind = kind
        self.deadline = time.monotonic() if deadline is None else deadline
        self.dropped = False
        self._lanes: set[Lane] = set()  # lanes that have held work of this ticket (purged on drop)

    def commit(self, deadline: float | None = None) -> None:
        """A speculation becomes the reply: its work is now FINAL (queued work moves up)."""
        self.kind = Kind.FINAL
        if deadline is not None:
            self.deadline = deadline
        for lane in list(self._lanes):
            lane._dispatch()

    def drop(self) -> None:
        """Nobody needs this ticket's work any more: queued jobs that only it wanted go."""
        if self.dropped:
            return
        self.dropped = True
        for lane in list(self._lanes):
            lane._purge()

    def __repr__(self) -> str:
        return f"Ticket({self.session!r}, {self.kind.name}, dropped={self.dropped})"


current_ticket: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar("model_work_ticket", default=None)
# Set by whoever knows (decoder/clause_pipeline.py): when the next job's result is first needed.
needed_at: contextvars.ContextVar[float | None] = contextvars.ContextVar("model_work_needed_at", default=None)
LATER_S = 1.0  # needed further ahead than this: after speculative work


def ticket_now() -> Ticket:
    """The ticket of the running task, or an anonymous FINAL one (tools, tests, warm-up)."""
    return current_ticket.get() or Ticket()


@contextmanager
def working_for(ticket: Ticket) -> Iterator[Ticket]:
    token = current_ticket.set(ticket)
    try:
        yield ticket
    finally:
        current_ticket.reset(token)


class Job:
    """A place in a lane's queue: an item of work and the tickets waiting for it."""

    _seq = itertools.count()

    def __init__(self, lane: "Lane", item: Any, tickets: list[Ticket], group: Any) -> None:
        self.lane, self.item, self.group = lane, item, group
        self.tickets = tickets
        self.seq = next(self._seq)
        self.enqueued = time.monotonic()
        self.needed_at = needed_at.get()
        self.started: float | None = None
        self.task: asyncio.Task | None = None  # the batch running it (lanes with a batch_fn)
        self.batch: list[Job] = []
        loop = asyncio.get_running_loop()
        self.granted: asyncio.Future[None] = loop.create_future()  # a worker is ours
        self.outcome: asyncio.Future[Any] = loop.create_future()  # a batched job's result

    def live(self) -> list[Ticket]:
        return [t for t in self.tickets if not t.dropped]

    def priority(self) -> tuple[float, float, int]:
        kind, deadline = self.kind(), min(t.deadline for t in (self.live() or self.tickets))
        if self.needed_at is not None and self.needed_at > deadline:
            deadline = self.needed_at
            if kind < Kind.WARMUP and deadline - time.monotonic() > LATER_S:
                return (Kind.SPECULATIVE + 0.5, deadline, self.seq)
        return (kind, deadline, self.seq)

    def kind(self) -> Kind:
        return min(t.kind for t in (self.live() or self.tickets))

    def waited_s(self, now: float) -> float:
        """How long it has waited since someone needed it (a sentence queued early is not late)."""
        since = self.enqueued if self.needed_at is None else max(self.enqueued, self.needed_at - LATER_S)
        return max(0.0, now - since)

    def add(self, ticket: Ticket) -> None:
        """Another ticket waits for the same work (it may be more urgent)."""
        self.tickets.append(ticket)
        ticket._lanes.add(self.lane)
        if self.started is None:
            self.lane._dispatch()

    def release(self, ticket: Ticket) -> None:
        """`ticket` stopped waiting; the job goes when nobody is left."""
        if ticket in self.tickets:
            self.tickets.remove(ticket)
        if self.started is None and not self.live():
            self.lane._remove(self, dropped=True)
        elif self.started is not None and not self.tickets:
            self.lane._abandon(self)


class Lane:
    """One model's workers and its priority queue.

    `run(fn, *args)`: one blocking call in the lane's executor.
    `slot()`: hold a worker while async work runs (an LLM stream).
    `submit(item)` (lanes with a `batch_fn`): items of one `group` are run together, up to
    `max_batch` at a time, by `batch_fn(items) -> results` in the executor.
    """

    def __init__(self, name: str, workers: int, *, executor: Executor | None = None,
                 batch_fn: Callable[[Sequence[Any]], Sequence[Any]] | None = None, max_batch: int = 1,
                 history: int = 500, serial: bool = True, guard: WedgeGuard | None = None) -> None:
        self.name, self.guard = name, guard  # guard: a batch that never returns is redone (core/wedge.py)
        self.workers = workers
        # True: each worker does the work itself (a thread), so a busy worker is a busy resource
        # and the lane's utilization limits capacity (core/load.py). False: workers only hold a
        # place on a server that batches them (the LLM's slots).
        self.serial = serial
        self.executor = executor
        self.batch_fn = batch_fn
        self.max_batch = max_batch if batch_fn else 1
        self.running = 0
        self._running_jobs: set[Job] = set()  # started, not finished: a wedged worker shows here
        self._queue: list[Job] = []
        self.waits: dict[Kind, deque[float]] = {k: deque(maxlen=history) for k in Kind}
        self.final_waits: deque[tuple[float, float]] = deque(maxlen=history)  # (when, wait) for admission
        self.busy_s = 0.0
        self.jobs = 0
        self.dropped = 0
        self.batches = 0
        self.batched_items = 0
        self.counters: dict[str, int] = {}  # the stage's own counts, shown in /metrics (e.g. Whisper's re-runs)
        self.last_work: dict[str, float] = {}  # session -> when it last queued or finished work here

    # -- the three ways in ---------------------------------------------------------------------

    async def run(self, fn: Callable[..., Any], *args: Any, ticket: Ticket | None = None) -> Any:
        async with self.slot(ticket):
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    @asynccontextmanager
    async def slot(self, ticket: Ticket | None = None):
        job = self.enqueue(None, ticket or ticket_now())
        await self._wait_granted(job)
        try:
            yield job
        finally:
            self._finish([job])

    def enqueue(self, item: Any, ticket: Ticket, group: Any = None) -> Job:
        """Queue work (sync). `submit` / `slot` wrap this; a shared job is `Job.add`ed to."""
        job = Job(self, item, [ticket], group)
        ticket._lanes.add(self)
        self._saw([ticket])
        self._queue.append(job)
        self._dispatch()
        return job

    async def submit(self, item: Any, ticket: Ticket | None = None, group: Any = None) -> Any:
        assert self.batch_fn is not None, f"lane {self.name} has no batch_fn"
        return await self.result(self.enqueue(item, ticket or ticket_now(), group))

    async def result(self, job: Job, ticket: Ticket | None = None) -> Any:
        """Wait for a batched job's result; a cancelled waiter releases its ticket."""
        ticket = ticket or job.tickets[0]
        try:
            await asyncio.shield(job.granted)
            return await asyncio.shield(job.outcome)
        except asyncio.CancelledError:
            job.release(ticket)
            raise

    # -- internals -----------------------------------------------------------------------------

    async def _wait_granted(self, job: Job) -> None:
        try:
            await asyncio.shield(job.granted)
        except asyncio.CancelledError:
            if job.started is not None:  # granted just as we were cancelled: give it back
                self._finish([job])
            else:
                self._remove(job, dropped=False)
            raise

    def _dispatch(self) -> None:
        self._purge()
        while self.running < self.workers and self._queue:
            self._queue.sort(key=Job.priority)
            first = self._queue[0]
            batch = [first]
            if self.max_batch > 1:
                batch += [j for j in self._queue[1:] if j.group == first.group][: self.max_batch - 1]
            for job in batch:
                self._queue.remove(job)
                self._start(job)
            self.running += 1
            if self.batch_fn is not None:
                task = asyncio.get_running_loop().create_task(self._run_batch(batch), name=f"lane-{self.name}")
                for job in batch:
                    job.task, job.batch = task, batch

    def _start(self, job: Job) -> None:
        job.started = time.monotonic()
        self._running_jobs.add(job)
        kind = job.kind()
        self.waits[kind].append(job.waited_s(job.started))
        if kind is Kind.FINAL:
            self.final_waits.append((job.started, job.waited_s(job.started)))
        self.jobs += 1
        if not job.granted.done():
            job.granted.set_result(None)

    async def _run_batch(self, batch: list[Job]) -> None:
        self.batches += 1
        self.batched_items += len(batch)
        try:
            if inspect.iscoroutinefunction(self.batch_fn):
                results = await self.batch_fn([j.item for j in batch])
            elif self.guard is not None:
                results = await self.guard.run(self, batch)
            else:
                results = await asyncio.get_running_loop().run_in_executor(
                    self.executor, self.batch_fn, [j.item for j in batch])
            for job, res in zip(batch, results, strict=True):
                job.outcome.set_result(res)
        except asyncio.CancelledError:  # _abandon: nobody waits for it any more
            for job in batch:
                if not job.outcome.done():
                    job.outcome.set_exception(WorkDropped(f"{self.name}: cancelled, nobody waited"))
                    job.outcome.exception()
        except Exception as exc:  # every waiter hears of it
            for job in batch:
                if not job.outcome.done():
                    job.outcome.set_exception(exc)
                    job.outcome.exception()  # retrieved: the waiters may all have gone
        finally:
            self._finish(batch)

    def _saw(self, tickets: Sequence[Ticket]) -> None:
        now = time.monotonic()
        self.last_work.update((t.session, now) for t in tickets)
        if len(self.last_work) > 1024:  # sessions come and go: forget those idle for minutes
            self.last_work = {s: when for s, when in self.last_work.items() if now - when < 300}

    def _finish(self, batch: list[Job]) -> None:
        self._saw([t for j in batch for t in j.tickets])
        self.busy_s += time.monotonic() - min(j.started or time.monotonic() for j in batch)
        self._running_jobs.difference_update(batch)
        self.running -= 1
        self._dispatch()

    def _remove(self, job: Job, dropped: bool) -> None:
        if job in self._queue:
            self._queue.remove(job)
            if dropped:
                self._dropped(job, "no live ticket")
            self._dispatch()

    def _abandon(self, job: Job) -> None:
        """A started job nobody waits for: an async batch (a remote call) whose every job is
        abandoned is cancelled. A thread cannot be stopped; it runs to its end."""
        if (job.task is not None and inspect.iscoroutinefunction(self.batch_fn)
                and all(not j.tickets for j in job.batch)):
            job.task.cancel()

    def _purge(self) -> None:
        for job in [j for j in self._queue if not j.live()]:
            self._queue.remove(job)
            self._dropped(job, "every ticket was dropped")

    def _dropped(self, job: Job, why: str) -> None:
        self.dropped += 1
        if not job.granted.done():
            job.granted.set_exception(WorkDropped(f"{self.name}: {why}"))
            job.granted.exception()  # retrieved: a dropped job may have no waiter left

    # -- metrics -------------------------------------------------------------------------------

    def oldest_running_s(self) -> float:
        """How long the longest-running job has held its worker (0: none running)."""
        started = [j.started for j in self._running_jobs if j.started is not None]
        return time.monotonic() - min(started) if started else 0.0

    def snapshot(self) -> dict[str, Any]:
        return lane_snapshot(self)


class Scheduler:
    """The server's lanes, by name. Stages ask for theirs at build time (`lane(...)`)."""

    def __init__(self) -> None:
        self.lanes: dict[str, Lane] = {}

    def lane(self, name: str, workers: int, **kwargs: Any) -> Lane:
        """A new lane; a second one of the same name (two LLM clients, say) is `name.2`."""
        unique, n = name, 1
        while unique in self.lanes:
            n += 1
            unique = f"{name}.{n}"
        self.lanes[unique] = lane = Lane(unique, workers, **kwargs)
        return lane

    def sessions_at_work(self, within_s: float = 0.0) -> set[str]:
        """Sessions with model work queued or running in any lane, or queued or finished in the
        last `within_s`: has a stage the box to itself (Whisper's encoder then takes both cores)?
        Callable from a worker thread: it reads copies (atomic under the GIL), which is all a
        heuristic needs."""
        sessions: set[str] = set()
        since = time.monotonic() - within_s
        for lane in list(self.lanes.values()):
            for job in list(lane._queue) + list(lane._running_jobs.copy()):
                sessions.update(t.session for t in list(job.tickets))
            sessions.update(s for s, when in lane.last_work.copy().items() if when > since)
        return sessions

    def final_backlog_ms(self) -> float:
        """How long the oldest FINAL job still queued has waited (0 when none waits): a caller who
        finished speaking is waiting for a model worker right now."""
        now = time.monotonic()
        return max((1000 * job.waited_s(now) for lane in self.lanes.values() for job in lane._queue
                    if job.live() and job.kind() is Kind.FINAL), default=0.0)

    def final_wait_p95_ms(self, window_s: float = 30.0) -> float:
        """The worst lane's p95 wait of FINAL work started in the last `window_s`: how long a
        caller who finished speaking waits for a model worker now."""
        since = time.monotonic() - window_s
        waits = [sorted(w for t, w in lane.final_waits if t >= since) for lane in self.lanes.values()]
        return max((percentile(values, 95) * 1000 for values in waits if values), default=0.0)

    def stuck(self, after_s: float) -> dict[str, float]:
        """Lanes whose workers are threads (`serial`) with a job running longer than `after_s`:
        a model call that never returns (and no `WedgeGuard` replaced its worker). Every session's
        work of that kind queues behind it: /healthz reports it, the process should be restarted."""
        ages = {name: lane.oldest_running_s() for name, lane in self.lanes.items() if lane.serial}
        return {name: round(age, 1) for name, age in ages.items() if age > after_s}

    def snapshot(self) -> dict[str, Any]:
        return {name: lane.snapshot() for name, lane in self.lanes.items()}
