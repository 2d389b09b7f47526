"""AudioOutput (controller/ports.py) per transport.

WebSocket: audio goes out as response.output_audio.delta events as soon as it is synthesized
(ahead of real time, as OpenAI does); what the caller has heard is estimated by wall clock since
the first delta. WebRTC: an aiortc track that plays 20 ms frames in real time, so what was heard
is exactly what was sent, and clear() silences the caller at the next frame.

Both ignore writes between clear() and the next begin_reply(): a cancelled reply can still
produce one chunk before its task sees the cancellation, and that chunk must not play.

Each hands what it sends to the session's echo canceller (`echo`, realtime/echo.py) with the time
it starts playing at the caller, and tells it when the rest was cut.
"""
from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import av
import numpy as np
import soxr
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from decoder.base import AudioChunk
from realtime.audio import encode_delta
from realtime.echo import EchoCanceller


class Resampler:
    """Decoder rate → transport rate, streaming; the source rate is learned from the first chunk."""

    def __init__(self, out_rate: int) -> None:
        self.out_rate = out_rate
        self._stream: soxr.ResampleStream | None = None
        self._in_rate: int | None = None

    def __call__(self, chunk: AudioChunk) -> np.ndarray:
        if chunk.sample_rate == self.out_rate:
            return chunk.pcm.astype(np.int16, copy=False)
        if self._stream is None or self._in_rate != chunk.sample_rate:
            self._in_rate = chunk.sample_rate
            self._stream = soxr.ResampleStream(chunk.sample_rate, self.out_rate, 1, dtype="int16")
        return self._stream.resample_chunk(chunk.pcm.astype(np.int16, copy=False))

    def flush(self) -> np.ndarray:
        """The resampler's delayed tail, at the end of a reply."""
        if self._stream is None:
            return np.zeros(0, dtype=np.int16)
        tail, self._stream = self._stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True), None
        return tail


class WebSocketAudioOutput:
    echo: EchoCanceller | None = None  # set by the session

    def __init__(self, send: Callable[[dict[str, Any]], None], rate: int = 24_000,
                 clock: Callable[[], float] = time.monotonic, fmt: str = "audio/pcm") -> None:
        self._send = send
        self.rate = rate
        self.format = fmt  # session.audio.output.format type; like rate, taken at each reply's start
        self._format = fmt
        self._clock = clock
        self._ids: tuple[str, str] | None = None  # (response_id, item_id) while a reply plays
        self._resample = Resampler(rate)
        self._sent_s = 0.0
        self._t_first: float | None = None
        self._frozen: float | None = None  # played_seconds at clear()
        self._cleared = asyncio.Event()
        self._play_end = 0.0  # when the client runs out of audio, if it plays what it gets in real time

    def begin_reply(self, response_id: str, item_id: str) -> None:
        self._ids = (response_id, item_id)
        self._format = self.format
        self._resample = Resampler(self.rate)
        self._sent_s, self._t_first, self._frozen = 0.0, None, None
        self._cleared = asyncio.Event()

    def write(self, chunk: AudioChunk) -> None:
        if self._ids is not None:
            self._send_pcm(self._resample(chunk))

    def _send_pcm(self, pcm: np.ndarray) -> None:
        if not len(pcm) or self._ids is None:
            return
        now = self._clock()
        if self._t_first is None:
            self._t_first = now
        self._sent_s += len(pcm) / self.rate
        start = max(self._play_end, now)  # it plays from when it arrives, or when the audio before it ends
        self._play_end = start + len(pcm) / self.rate
        if self.echo is not None:
            self.echo.played(pcm, self.rate, start)
        response_id, item_id = self._ids
        self._send({"type": "response.output_audio.delta", "response_id": response_id, "item_id": item_id,
                    "output_index": 0, "content_index": 0, "delta": encode_delta(pcm, self._format)})

    def clear(self) -> None:
        self._frozen = self.played_seconds()
        self._ids = None
        self._play_end = 0.0
        self._cleared.set()
        if self.echo is not None:  # the client is told to stop (speech_started, response.done)
            self.echo.clear()

    def played_seconds(self) -> float:
        if self._frozen is not None:
            return self._frozen
        if self._t_first is None:
            return 0.0
        return min(self._sent_s, self._clock() - self._t_first)

    async def drain(self) -> None:
        self._send_pcm(self._resample.flush())
        cleared = self._cleared
        while self._ids is not None and self._t_first is not None:
            remaining = self._sent_s - (self._clock() - self._t_first)
            if remaining <= 0:
                return
            try:  # wake early on clear(); otherwise sleep until the estimate reaches the end
                await asyncio.wait_for(cleared.wait(), timeout=remaining)
                return
            except asyncio.TimeoutError:
                pass


class WebRTCAudioOutput(MediaStreamTrack):
    """The server's outgoing audio track: 48 kHz mono 20 ms frames, silence when idle."""

    kind = "audio"
    RATE = 48_000
    FRAME = 960  # 20 ms
    MAX_LAG_S = 0.2  # behind schedule by more than this (a stalled loop): resync, don't burst
    echo: EchoCanceller | None = None  # set by the session; its clock must be time.monotonic

    def __init__(self) -> None:
        super().__init__()
        self._frames: deque[np.ndarray] = deque()
        self._pending = np.zeros(0, dtype=np.int16)
        self._resample = Resampler(self.RATE)
        self._active = False
        self._played = 0  # samples of the current reply handed to the encoder
        self._idle = asyncio.Event()
        self._idle.set()
        self._start: float | None = None
        self._pts = 0
        self._silence = np.zeros(self.FRAME, dtype=np.int16)

    def begin_reply(self, response_id: str, item_id: str) -> None:
        self._active = True
        self._played = 0
        self._resample = Resampler(self.RATE)

    def write(self, chunk: AudioChunk) -> None:
        if self._active:
            self._queue(self._resample(chunk))

    def _queue(self, pcm: np.ndarray, pad: bool = False) -> None:
        buf = np.concatenate([self._pending, pcm])
        if pad and len(buf) % self.FRAME:
            buf = np.concatenate([buf, np.zeros(self.FRAME - len(buf) % self.FRAME, dtype=np.int16)])
        whole = len(buf) // self.FRAME * self.FRAME
        self._frames.extend(buf[i:i + self.FRAME] for i in range(0, whole, self.FRAME))
        self._pending = buf[whole:].copy()
        if self._frames:
            self._idle.clear()

    def clear(self) -> None:
        self._frames.clear()
        self._pending = np.zeros(0, dtype=np.int16)
        self._active = False
        self._idle.set()
        if self.echo is not None:
            self.echo.clear()

    def played_seconds(self) -> float:
        return self._played / self.RATE

    async def drain(self) -> None:
        if self._active:
            self._queue(self._resample.flush(), pad=True)
        await self._idle.wait()

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            self._pts += self.FRAME
            due = self._start + self._pts / self.RATE
            if now - due > self.MAX_LAG_S:
                self._start = now - self._pts / self.RATE
            elif due > now:
                await asyncio.sleep(due - now)
        if self._frames:
            pcm = self._frames.popleft()
            self._played += self.FRAME
            if not self._frames:
                self._idle.set()
            if self.echo is not None:
                self.echo.played(pcm, self.RATE, self._start + self._pts / self.RATE)
        else:
            pcm = self._silence
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, self.RATE)
        return frame
