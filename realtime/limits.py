"""Limits per client and per session (server.limits): new sessions per IP, idle and total time.

The bounds on queues and buffers live where the queues are (realtime/session.py: outbound
events, appended audio, conversation items; realtime/webrtc.py: data-channel events and the
connect timeout); the controller's stage deadlines in controller/ (asr_timeout_s, tts_timeout_s).
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable

from aiohttp import web

from realtime.protocol import ProtocolError
from vad.base import SAMPLE_RATE as FRAME_RATE

log = logging.getLogger(__name__)
WINDOW_S = 60.0


class RateLimiter:
    """At most `per_minute` hits per key in any 60 s (a sliding window of hit times per key).
    Memory: `per_minute` floats per key seen in the last minute; stale keys are swept."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self.hits: dict[str, deque[float]] = {}
        self._swept = clock()

    def hit(self, key: str) -> int | None:
        """None: allowed (and counted); else the seconds to wait (for Retry-After)."""
        if self.per_minute <= 0:
            return None
        now = self.clock()
        if now - self._swept > WINDOW_S:
            self._sweep(now)
        times = self.hits.setdefault(key, deque(maxlen=self.per_minute))
        while times and now - times[0] >= WINDOW_S:
            times.popleft()
        if len(times) >= self.per_minute:
            return max(1, math.ceil(WINDOW_S - (now - times[0])))
        times.append(now)
        return None

    def _sweep(self, now: float) -> None:
        self._swept = now
        for key in [k for k, t in self.hits.items() if not t or now - t[-1] >= WINDOW_S]:
            del self.hits[key]


def client_ip(request: web.Request, trust_forwarded_for: bool) -> str:
    """The caller's address; behind a proxy that sets X-Forwarded-For, the hop it appended last."""
    if trust_forwarded_for:
        forwarded = request.headers.get("X-Forwarded-For", "")
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        if hops:
            return hops[-1]
    return request.remote or "unknown"


class Lifetime:
    """A session's idle timeout and maximum duration: `step.session_expiring` once, expiry_warning_s
    before the end, then `end(reason, message)`. `touch()` on activity (a client event other than
    an audio append, speech, a reply)."""

    def __init__(self, idle_timeout_s: float, max_session_s: float, warning_s: float,
                 warn: Callable[[str, float], None], end: Callable[[str, str], object],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_s, self.max_s, self.warning_s = idle_timeout_s, max_session_s, warning_s
        self._warn, self._end, self.clock = warn, end, clock
        self.started = self.last_activity = clock()
        self._warned_for: float | None = None  # the end time a warning was sent for
        self.task: asyncio.Task | None = None
        if idle_timeout_s > 0 or max_session_s > 0:
            self.task = asyncio.create_task(self._watch(), name="step-session-lifetime")

    def touch(self) -> None:
        self.last_activity = self.clock()

    def next_end(self) -> tuple[float, str]:
        ends = []
        if self.max_s > 0:
            ends.append((self.started + self.max_s, "max_duration"))
        if self.idle_s > 0:
            ends.append((self.last_activity + self.idle_s, "idle_timeout"))
        return min(ends)

    def message(self, reason: str) -> str:
        if reason == "max_duration":
            return f"Your session hit the maximum duration of {_duration(self.max_s)}."
        return f"Your session was idle for {_duration(self.idle_s)} (no speech, reply or client event) and ended."

    async def _watch(self) -> None:
        while True:
            end_at, reason = self.next_end()
            now = self.clock()
            if now >= end_at:
                await self._end(reason, self.message(reason))
                return
            warn_at = end_at - self.warning_s
            if self.warning_s > 0 and now >= warn_at and (self._warned_for is None or end_at > self._warned_for + 1):
                self._warned_for = end_at
                self._warn(reason, round(end_at - now, 1))
            wake = warn_at if now < warn_at else end_at
            await asyncio.sleep(min(max(0.05, wake - now), 1.0))

    def cancel(self) -> None:
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()


def _duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{seconds:g} seconds"


def bound_input(session, frames: list, event_id: str | None) -> None:
    """With turn detection off, appended audio waits for a commit: at most max_input_buffer_s of
    it (ProtocolError past it; the audio is not added). With it on, turns end by themselves
    (controller max_turn_s)."""
    ctl = session.controller
    if ctl.turn_detection or not ctl.has_uncommitted_input:
        session.uncommitted_s = 0.0
    if ctl.turn_detection:
        return
    seconds = sum(len(f) for f in frames) / FRAME_RATE
    limit = session.limits.max_input_buffer_s
    if session.uncommitted_s + seconds > limit:
        raise ProtocolError("input_audio_buffer_full", f"the input audio buffer holds {session.uncommitted_s:.1f} s "
                            f"of audio, the most it takes is {limit:g} s: commit or clear it (this audio was not "
                            "added)", "audio", event_id)
    session.uncommitted_s += seconds


def forget_oldest_items(session) -> None:
    """Spoken turns past max_conversation_items push the oldest items out (long gone from the
    prompt's token budget by then); the client is told as if it had deleted them."""
    turns = session.context.turns
    while len(turns) > session.limits.max_conversation_items:
        item_id = turns[0].item_id
        if not session.controller.delete_item(item_id):
            del turns[0]
        session.renderer.forget_item(item_id, turns[-1].item_id if turns else None)
        session.send({"type": "conversation.item.deleted", "item_id": item_id})
