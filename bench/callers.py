"""Running synthetic callers: one share of a level's callers in one event loop — the bench's own
process (`--caller-procs 0`) or a caller process (bench/caller_proc.py) — and what that loop
costs (its CPU and how late it wakes up), so the callers' own limits show beside the server's.

Every time is time.monotonic() (CLOCK_MONOTONIC: one clock for all processes on the machine), so
records, call intervals and stalls from different processes compare directly.
"""
from __future__ import annotations

import asyncio
import importlib
import math
import os
import time
import traceback
from dataclasses import asdict, dataclass, field

import aiohttp
import numpy as np
import psutil

from bench.corpus import Conversation
from bench.measure import Refused, TurnRecord, analyze, refused_records
from bench.mic import ScriptOptions

CALLER_MODULES = {"webrtc": "bench.caller_webrtc", "ws": "bench.caller_ws", "twilio": "bench.caller_twilio"}
STAGGER_S = 0.37  # between callers' first calls in a level: they do not all speak in lockstep
CALLERS_PER_PROC = 4  # --caller-procs auto: one caller process per this many callers
MAX_RETRY_S = 30.0  # a Retry-After longer than this is cut to it


def caller_module(transport: str):
    """bench.caller_ws / caller_webrtc / caller_twilio, imported only when used (aiortc is heavy)."""
    return importlib.import_module(CALLER_MODULES[transport])


def auto_procs(callers: int) -> int:
    return max(1, math.ceil(callers / CALLERS_PER_PROC))


class LoopLag:
    """How late this process's event loop wakes up. The callers' clock readings are only as
    good as this: a loaded machine shows here, and the report says so next to the latencies."""

    def __init__(self, period_s: float = 0.01, stall_s: float = 0.02) -> None:
        self.period, self.stall_s, self.lags = period_s, stall_s, []
        self.stalls: list[tuple[float, float]] = []  # (from, to) when the loop was late > stall_s
        self._taken = 0  # stalls before this index were reported by an earlier take()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(self.period)
            now = time.monotonic()
            lag = now - t - self.period
            self.lags.append(lag)
            if lag > self.stall_s:
                self.stalls.append((now - lag, now))

    def take(self) -> dict:
        """Lag figures since the last take()."""
        lags, self.lags = self.lags, []
        stalls, self._taken = self.stalls[self._taken:], len(self.stalls)
        if not lags:
            return {}
        return {"caller_loop_lag_max_ms": round(max(lags) * 1000, 1),
                "caller_loop_lag_p99_ms": round(float(np.percentile(lags, 99)) * 1000, 1),
                "caller_stalls": len(stalls), "caller_stall_s": round(sum(b - a for a, b in stalls), 2)}

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class CpuMeter:
    """CPU % (of one core) of this process from now to stop(): the mean from its CPU times, the
    max over `period_s` samples."""

    def __init__(self, period_s: float = 1.0) -> None:
        self.proc, self.period = psutil.Process(), period_s
        self.t0, self.cpu0 = time.monotonic(), self._cpu()
        self.samples: list[float] = []
        self.proc.cpu_percent(None)
        self._task = asyncio.create_task(self._run())

    def _cpu(self) -> float:
        t = self.proc.cpu_times()
        return t.user + t.system

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            self.samples.append(self.proc.cpu_percent(None))

    async def stop(self) -> dict:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        dt = time.monotonic() - self.t0
        return {"cpu_mean_percent": round((self._cpu() - self.cpu0) / dt * 100, 1) if dt > 0 else None,
                "cpu_max_percent": round(max(self.samples), 1) if self.samples else None}


@dataclass
class CallerPlan:
    caller: int
    conversations: list[int]  # indices into the corpus, called in this order (cycled if sustained)
    start_s: float  # first call this long after the level's start


@dataclass
class ShareJob:
    """What one event loop runs for a level. Times are monotonic, set when the level starts."""
    transport: str
    url: str
    plans: list[CallerPlan]
    opts: ScriptOptions
    max_turns: int | None = None
    sustained: bool = False  # call again (next conversation) until `until`
    t0: float = 0.0  # the level's start
    until: float | None = None  # no call or turn is started after this (sustained: the end of the run)
    hard_stop: float = math.inf  # calls still running then are cut (and reported)
    retry_s: float = 1.0  # sustained: wait this long after a refused or failed call (or the Retry-After)

    def to_json(self) -> dict:
        d = asdict(self)
        d["hard_stop"] = None if math.isinf(self.hard_stop) else self.hard_stop
        return d

    @classmethod
    def from_json(cls, d: dict) -> "ShareJob":
        d = dict(d)
        d["plans"] = [CallerPlan(**p) for p in d["plans"]]
        opts = dict(d["opts"])
        opts["think_s"] = tuple(opts["think_s"])
        d["opts"] = ScriptOptions(**opts)
        d["hard_stop"] = math.inf if d.get("hard_stop") is None else d["hard_stop"]
        return cls(**d)


class Sink:
    """Where a share's results go as they come (in-process: collected; caller process: JSON lines)."""

    def turn(self, v2v_ms: float | None) -> None: ...

    def call(self, info: dict) -> None: ...

    def records(self, records: list[TurnRecord]) -> None: ...

    def error(self, text: str) -> None: ...


@dataclass
class Collected(Sink):
    on_turn: object = None
    recs: list[TurnRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    calls: list[dict] = field(default_factory=list)

    def turn(self, v2v_ms):
        if self.on_turn:
            self.on_turn(v2v_ms)

    def call(self, info):
        self.calls.append(info)

    def records(self, records):
        self.recs += records

    def error(self, text):
        self.errors.append(text)


def turns_of(conv: Conversation, max_turns: int | None) -> list:
    return conv.turns[:max_turns] if max_turns else conv.turns


async def run_share(job: ShareJob, corpus: list[Conversation], sink: Sink, lag: LoopLag) -> None:
    """Each planned caller calls its conversations one after the other (sustained: round and
    round until `until`); every call's turns are analyzed here, with this loop's own stalls."""
    module = caller_module(job.transport)

    async def one_caller(plan: CallerPlan) -> None:
        await asyncio.sleep(max(0.0, job.t0 + plan.start_s - time.monotonic()))
        n = 0
        while n < len(plan.conversations) or job.sustained:
            if job.until is not None and time.monotonic() >= job.until:
                break
            conv = corpus[plan.conversations[n % len(plan.conversations)]]
            seed, n = plan.caller * 1000 + n, n + 1
            t_call, outcome, reason, recs, retry = time.monotonic(), "ok", None, [], job.retry_s
            try:
                timings, heard, events = await module.call(job.url, conv, job.opts, job.max_turns, seed=seed,
                                                           progress=sink.turn)
                recs = analyze(plan.caller, timings, heard.chunks, events, lag.stalls)
            except Refused as exc:
                outcome, reason = "refused", exc.reason
                if exc.retry_after_s:  # as a client should: call again when the server said
                    retry = min(max(retry, exc.retry_after_s), MAX_RETRY_S)
                said = (analyze(plan.caller, exc.timings, exc.heard.chunks, exc.events, lag.stalls)
                        if exc.timings and exc.heard is not None else [])
                recs = refused_records(plan.caller, turns_of(conv, job.max_turns), exc, said)
            except asyncio.CancelledError:
                sink.call({"caller": plan.caller, "conversation": conv.name, "t_start": t_call,
                           "t_end": time.monotonic(), "outcome": "cut"})
                raise
            except (ConnectionError, OSError, asyncio.TimeoutError, aiohttp.ClientError) as exc:
                outcome, reason = "error", f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # a bug in the caller must not end every other caller's level
                outcome, reason = "error", f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            sink.call({"caller": plan.caller, "conversation": conv.name, "t_start": t_call,
                       "t_end": time.monotonic(), "outcome": outcome, "reason": reason})
            if outcome == "error":
                sink.error(f"caller {plan.caller}, {conv.name}: {reason}")
            if recs:
                sink.records(recs)
            if outcome != "ok" and job.sustained:
                await asyncio.sleep(min(retry, max(0.0, job.until - time.monotonic())) if job.until else retry)

    tasks = [asyncio.create_task(one_caller(p)) for p in job.plans]
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, job.hard_stop - time.monotonic())
                                    if math.isfinite(job.hard_stop) else None)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for plan, task in zip(job.plans, tasks):
        if task in pending:
            sink.error(f"caller {plan.caller}: cut at the hard stop (its call in progress is not counted)")
        elif task.exception() is not None:
            exc = task.exception()
            sink.error(f"caller {plan.caller}: {type(exc).__name__}: {exc}")


@dataclass
class CallerRun:
    """A level's callers, from every process."""
    records: list[TurnRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    calls: list[dict] = field(default_factory=list)
    procs: list[dict] = field(default_factory=list)  # per caller process: pid, callers, CPU, loop lag, exit


def split(plans: list[CallerPlan], procs: int) -> list[list[CallerPlan]]:
    """Callers dealt round-robin: caller c runs in process c mod K (start times interleave)."""
    procs = max(1, min(procs, len(plans)))
    return [plans[k::procs] for k in range(procs)]


async def run_in_process(job: ShareJob, corpus: list[Conversation], on_turn, lag: LoopLag) -> CallerRun:
    """`--caller-procs 0`: the callers run in the bench's own event loop (as before)."""
    sink = Collected(on_turn)
    lag.take()
    cpu = CpuMeter()
    await run_share(job, corpus, sink, lag)
    stats = {"proc": 0, "pid": os.getpid(), "in_process": True, "callers": [p.caller for p in job.plans],
             **await cpu.stop(), **lag.take(), "exit_code": None, "error": None}
    return CallerRun(sink.recs, sink.errors, sink.calls, [stats])


def caller_summary(procs: list[dict]) -> dict:
    """Per level: the callers' own cost over all their processes (worst process for the lag)."""
    def worst(key):
        vals = [p[key] for p in procs if p.get(key) is not None]
        return max(vals) if vals else None

    cpu = [p["cpu_mean_percent"] for p in procs if p.get("cpu_mean_percent") is not None]
    return {"caller_procs": sum(not p.get("in_process") for p in procs),
            "caller_cpu_percent": round(sum(cpu), 1) if cpu else None,
            "caller_cpu_busiest_percent": max(cpu) if cpu else None,
            "caller_loop_lag_max_ms": worst("caller_loop_lag_max_ms"),
            "caller_loop_lag_p99_ms": worst("caller_loop_lag_p99_ms"),
            "caller_stalls": sum(p.get("caller_stalls") or 0 for p in procs),
            "caller_proc_failures": sum(p.get("error") is not None for p in procs)}
