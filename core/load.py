"""How many calls this server can carry: admission by measured capacity, not by a constant.

A call costs CPU for its models (ASR, LLM, TTS: the scheduler's lanes) and for its media. On a
small box the CPU is the wall, and a new call admitted past it slows every call in progress. So
the monitor samples the CPU time of the whole process tree (the server and its LLM server child)
and learns what the server costs with no session (its idle baseline) and what one active session
adds on top; the server admits a new session only while

  - the baseline plus the sessions already admitted plus this one fit in `target_utilization` of
    the cores at that cost (before enough has been seen, at the configured prior `session_cpu`), and
  - no model lane whose workers are threads (Whisper's batches, piper's sentences) would be busier
    than `lane_utilization` (learned per session like the CPU): one worker at 80 % makes bursts
    queue for seconds even while the CPU as a whole looks half idle, and
  - the model queues are not making callers wait right now: no FINAL job (a caller who finished
    speaking) has been queued for a model worker longer than `max_final_wait_ms`. This is the
    backlog as it stands, not a recent percentile, so a burst closes the door only while it lasts;
  - the calls in progress are answered within their budget: the p90 of the last `reply_window_s`
    of replies' end of turn → first audio is at most `max_reply_delay_ms` (the latency callers
    feel, whatever its cause: what the CPU model misses shows here).

The cores are not the server's alone on a shared box (a load generator, a sidecar, another
service): the CPU that other processes use on the cores it may run on is measured too and left
to them (`count_other_processes`; not when `cores` gives this server a share of the box, as
`serve --workers N` does, whose siblings are within the other shares).

Sessions in progress are never degraded to make room; a refused caller is told when to retry.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections import deque
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from core.lane_metrics import percentile
from core.scheduler import Scheduler

log = logging.getLogger(__name__)
MIN_REPLIES = 4  # fewer recent replies than this say nothing about the calls' latency


class AdmissionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    session_cpu: float = Field(0.2, gt=0, le=64, description="CPU (in cores) one talking session costs until "
                                                            "measured (bench: CPU per active session)")
    learn: bool = Field(True, description="replace session_cpu by the measured cost once learn_after_s of "
                                          "session time has been seen")
    learn_after_s: float = Field(120.0, ge=1, description="session-seconds observed before the measured cost counts")
    target_utilization: float = Field(0.9, gt=0, le=1, description="share of the cores the admitted sessions may use")
    lane_utilization: float = Field(0.6, gt=0, le=1, description="how busy a thread lane (ASR, TTS) may get: "
                                                                 "above ~60 % a single worker's queue grows in bursts")
    max_final_wait_ms: float = Field(600.0, gt=0, description="refuse while a finished turn has waited longer than "
                                                             "this for a model worker (and is still waiting)")
    max_reply_delay_ms: float | None = Field(
        2000.0, gt=0, description="refuse while the p90 of recent replies' end of turn -> first audio is above "
                                  "this (the calls in progress are over budget); null: not checked")
    reply_window_s: float = Field(30.0, gt=0, description="the recent replies that count for max_reply_delay_ms")
    count_other_processes: bool = Field(True, description="leave the CPU other processes use on this server's "
                                                          "cores to them (ignored when `cores` is set)")
    retry_after_s: int = Field(5, ge=1, description="the Retry-After of a refusal")
    cores: float | None = Field(None, gt=0, le=1024, description="cores this server may fill (default: all it may "
                                                                 "run on); `serve --workers N` gives each worker "
                                                                 "its share of the box")


@dataclass
class Decision:
    admit: bool
    reason: str = ""
    retry_after_s: int = 0


class LoadMonitor:
    def __init__(self, scheduler: Scheduler, config: AdmissionConfig | None = None, cores: int | None = None,
                 period_s: float = 1.0, smoothing_s: float = 30.0) -> None:
        self.scheduler = scheduler
        self.cfg = config or AdmissionConfig()
        self.cores = cores or self.cfg.cores or len(os.sched_getaffinity(0))
        self.period_s = period_s
        self.smoothing_s = smoothing_s
        self.cpu_util = 0.0  # smoothed, of all cores (1.0 = all busy)
        self.idle_cpu = 0.0  # cores the server uses with no session (model servers idling), smoothed
        self.other_cpu = 0.0  # cores other processes use on ours, smoothed (count_other_processes)
        self.count_others = self.cfg.count_other_processes and self.cfg.cores is None and cores is None
        self.replies: deque[tuple[float, float]] = deque(maxlen=500)  # (when, end of turn -> first audio ms)
        self.measured_session_cpu: float | None = None  # cores per active session above idle, smoothed
        self.session_seconds = 0.0  # how much session time the measurement has seen
        self.active_sessions = 0  # as of the last sample
        self.lane_per_session: dict[str, float] = {}  # a serial lane's utilization per active session
        self._last: tuple[float, float] | None = None  # (monotonic, cpu seconds)
        self._last_box: float | None = None  # busy CPU seconds of our cores, all processes
        self._last_busy: dict[str, float] = {}
        self._task: asyncio.Task | None = None

    # -- sampling ------------------------------------------------------------------------------

    def start(self, active_sessions) -> None:
        """Sample every period_s; `active_sessions()` counts the sessions now in a call."""
        self._task = asyncio.get_running_loop().create_task(self._run(active_sessions), name="load-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, active_sessions) -> None:
        import psutil

        me = psutil.Process()
        ours = set(os.sched_getaffinity(0))
        while True:
            try:
                cpu = _tree_cpu_seconds(me)
                box = _busy_cpu_seconds(ours) if self.count_others else None
                self.observe(time.monotonic(), cpu, active_sessions(), box)
            except Exception:  # never let the monitor die: admission falls back to the prior
                log.exception("load sample failed")
            await asyncio.sleep(self.period_s)

    def observe(self, now: float, cpu_seconds: float, active: int, box_busy_seconds: float | None = None) -> None:
        """One sample: the process tree's total CPU seconds so far, the sessions in a call, and
        (optional) the busy CPU seconds of our cores by every process on the machine."""
        self.active_sessions = active
        last, self._last = self._last, (now, cpu_seconds)
        last_box, self._last_box = self._last_box, box_busy_seconds
        busy = {name: lane.busy_s for name, lane in self.scheduler.lanes.items() if lane.serial}
        last_busy, self._last_busy = self._last_busy, busy
        if last is None or now <= last[0]:
            return
        dt = now - last[0]
        used = max(0.0, cpu_seconds - last[1]) / dt  # cores busy over the interval
        alpha = 1 - math.exp(-dt / self.smoothing_s)
        self.cpu_util += alpha * (min(used / self.cores, 1.0) - self.cpu_util)
        if box_busy_seconds is not None and last_box is not None:
            others = max(0.0, (box_busy_seconds - last_box) / dt - used)
            self.other_cpu += alpha * (others - self.other_cpu)
        if active == 0:
            self.idle_cpu += alpha * (used - self.idle_cpu)
        else:
            per_session = max(0.0, used - self.idle_cpu) / active
            if self.measured_session_cpu is None:
                self.measured_session_cpu = per_session
            else:
                self.measured_session_cpu += alpha * (per_session - self.measured_session_cpu)
            self.session_seconds += dt * active
            for name, total in busy.items():
                util = max(0.0, total - last_busy.get(name, total)) / dt / self.scheduler.lanes[name].workers
                before = self.lane_per_session.get(name)
                self.lane_per_session[name] = util / active if before is None else before + alpha * (util / active - before)

    # -- estimates -----------------------------------------------------------------------------

    @property
    def session_cpu(self) -> float:
        """Cores one session costs: the measured cost once enough was seen, else the prior."""
        if self.cfg.learn and self.measured_session_cpu is not None and self.session_seconds >= self.cfg.learn_after_s:
            return max(self.measured_session_cpu, 0.01)
        return self.cfg.session_cpu

    @property
    def capacity(self) -> int:
        """Sessions that fit, above the idle baseline, in target_utilization of the cores, and in
        lane_utilization of every serial lane (once learned)."""
        return max(1, int(min(n for n, _ in self._fits()) + 1e-9))

    def _fits(self) -> list[tuple[float, str]]:
        """(sessions that fit, what limits them) for the CPU and each learned serial lane."""
        room = self.cfg.target_utilization * self.cores - self.idle_cpu - self.other_cpu
        others = f", {self.other_cpu:.2f} used by other processes" if self.other_cpu >= 0.05 else ""
        fits = [(max(room, 0.0) / self.session_cpu, f"{self.session_cpu:.2f} cores each fill "
                                                    f"{self.cfg.target_utilization:.0%} of {self.cores} cores{others}")]
        if self.cfg.learn and self.session_seconds >= self.cfg.learn_after_s:
            fits += [(self.cfg.lane_utilization / per, f"the {lane} lane, {per:.0%} busy per session, may be "
                                                      f"{self.cfg.lane_utilization:.0%} busy")
                     for lane, per in self.lane_per_session.items() if per > 0.005]
        return fits

    def decide(self, admitted: int) -> Decision:
        """May one more session join the `admitted` ones (in a call or being set up)?"""
        retry = self.cfg.retry_after_s
        if admitted + 1 > self.capacity:
            why = min(self._fits())[1]
            return Decision(False, f"at capacity: {admitted} sessions ({why})", retry)
        wait = self.scheduler.final_backlog_ms()
        if admitted > 0 and wait > self.cfg.max_final_wait_ms:
            return Decision(False, f"overloaded: a finished turn has waited {wait:.0f} ms for a model "
                                   f"(limit {self.cfg.max_final_wait_ms:.0f} ms)", retry)
        late = self.reply_delay_p90_ms()
        if admitted > 0 and late is not None and self.cfg.max_reply_delay_ms and late > self.cfg.max_reply_delay_ms:
            return Decision(False, f"overloaded: replies start {late:.0f} ms after the end of turn (p90 of the last "
                                   f"{self.cfg.reply_window_s:.0f} s; limit {self.cfg.max_reply_delay_ms:.0f} ms)", retry)
        return Decision(True)

    def note_reply(self, eot_to_first_audio_ms: float, now: float | None = None) -> None:
        """A call in progress was answered: how long after its end of turn the first audio went out."""
        self.replies.append((time.monotonic() if now is None else now, eot_to_first_audio_ms))

    def reply_delay_p90_ms(self, now: float | None = None) -> float | None:
        """The p90 end of turn -> first audio of the replies of the last `reply_window_s` (None: fewer
        than MIN_REPLIES, too few to judge by)."""
        since = (time.monotonic() if now is None else now) - self.cfg.reply_window_s
        recent = sorted(ms for when, ms in self.replies if when >= since)
        return percentile(recent, 90) if len(recent) >= MIN_REPLIES else None

    def snapshot(self, admitted: int) -> dict:
        decision = self.decide(admitted)
        return {"admitting": decision.admit, "reason": decision.reason or None, "admitted_sessions": admitted,
                "active_sessions": self.active_sessions, "capacity_sessions": self.capacity,
                "session_cpu": round(self.session_cpu, 3),
                "measured_session_cpu": None if self.measured_session_cpu is None else round(self.measured_session_cpu, 3),
                "cpu_util": round(self.cpu_util, 3), "idle_cpu": round(self.idle_cpu, 3), "cores": self.cores,
                "lane_utilization_per_session": {k: round(v, 3) for k, v in self.lane_per_session.items()},
                "other_cpu": round(self.other_cpu, 3), "reply_delay_p90_ms": self.reply_delay_p90_ms(),
                "final_backlog_ms": round(self.scheduler.final_backlog_ms(), 1),
                "final_wait_p95_ms": round(self.scheduler.final_wait_p95_ms(), 1)}


def _busy_cpu_seconds(cpus: set[int]) -> float:
    """CPU seconds the given CPUs spent on any process (all but idle and I/O wait)."""
    import psutil

    per_cpu = psutil.cpu_times(percpu=True)
    return sum(sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
               for i, t in enumerate(per_cpu) if i in cpus)


def _tree_cpu_seconds(proc) -> float:
    import psutil

    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total
