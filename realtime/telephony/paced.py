"""An AudioOutput for carriers that play what they get at once and say nothing back (AudioSocket,
Vonage, Telnyx): we send 20 ms frames at the pace they play, a few frames ahead.

Without marks, the only way to know what the caller heard is to not let the carrier buffer: then
what was sent (less the small lead) is what was heard, a barge-in stops the audio within the lead,
and a reply is over when its last frame has been sent and played.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import numpy as np

from decoder.base import AudioChunk
from realtime.echo import EchoCanceller
from realtime.outputs import Resampler

log = logging.getLogger(__name__)
FRAME_S = 0.02
LEAD_FRAMES = 3  # sent ahead of real time: carriers keep a small jitter buffer, event loops jitter


class PacedAudioOutput:
    echo: EchoCanceller | None = None  # set by the session

    def __init__(self, rate: int, send_frame: Callable[[np.ndarray], None],
                 on_clear: Callable[[], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.frame = round(rate * FRAME_S)
        self._send_frame = send_frame  # one frame of int16 at `rate`; the carrier encodes it
        self._on_clear = on_clear
        self._clock = clock
        self._rid: str | None = None
        self._resample = Resampler(rate)
        self._queue = np.zeros(0, dtype=np.int16)
        self._sent = 0  # samples of this reply sent
        self._t_first: float | None = None
        self._frozen: float | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task | None = None

    def set_rate(self, rate: int) -> None:
        """The carrier's rate, known from its first message (before any reply)."""
        self.rate, self.frame = rate, round(rate * FRAME_S)
        self._resample = Resampler(rate)

    def start(self) -> asyncio.Task:
        self._task = asyncio.create_task(self._pace(), name="step-tel-paced")
        return self._task

    def begin_reply(self, response_id: str, item_id: str) -> None:
        self._rid = response_id
        self._resample = Resampler(self.rate)
        self._sent, self._t_first, self._frozen = 0, None, None

    def write(self, chunk: AudioChunk) -> None:
        if self._rid is not None:
            self._enqueue(self._resample(chunk))

    def _enqueue(self, pcm: np.ndarray) -> None:
        if len(pcm):
            self._queue = np.concatenate([self._queue, pcm.astype(np.int16, copy=False)])
            self._idle.clear()
            self._wake.set()

    async def _pace(self) -> None:
        next_t: float | None = None  # when the next frame starts playing at the caller
        while True:
            if len(self._queue) < self.frame:
                self._idle.set()
                next_t = None
                self._wake.clear()
                await self._wake.wait()
                continue
            now = self._clock()
            if next_t is None or next_t < now:  # the first frame after a gap plays at once
                next_t = now
            frame, self._queue = self._queue[:self.frame], self._queue[self.frame:]
            if self._t_first is None:
                self._t_first = next_t
            self._sent += len(frame)
            if self.echo is not None:
                self.echo.played(frame, self.rate, next_t)
            self._send_frame(frame)
            next_t += FRAME_S
            ahead = next_t - self._clock() - LEAD_FRAMES * FRAME_S
            if ahead > 0:
                await asyncio.sleep(ahead)

    def clear(self) -> None:
        if self._rid is not None or len(self._queue):
            self._frozen = self.played_seconds()
            if self._on_clear is not None and self._sent:
                self._on_clear()
        self._rid = None
        self._queue = np.zeros(0, dtype=np.int16)
        self._idle.set()
        if self.echo is not None:
            self.echo.clear()

    def played_seconds(self) -> float:
        if self._frozen is not None:
            return self._frozen
        if self._t_first is None:
            return 0.0
        return max(0.0, min(self._sent / self.rate, self._clock() - self._t_first))

    async def drain(self) -> None:
        tail = self._resample.flush()
        short = (-len(self._queue) - len(tail)) % self.frame  # carriers take whole frames only
        self._enqueue(np.concatenate([tail, np.zeros(short, dtype=np.int16)]))
        await self._idle.wait()
        if self._rid is not None and self._t_first is not None:  # the lead still has to play
            remaining = self._t_first + self._sent / self.rate - self._clock()
            if remaining > 0:
                await asyncio.sleep(remaining)
