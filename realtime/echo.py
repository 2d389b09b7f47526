"""Server-side echo cancellation: WebRTC's AEC3 on a session's input, its own output the reference.

For callers whose device cancels nothing (phones, many WebSocket clients, the bench), the
microphone hears the bot's reply and the VAD takes it for the caller talking: the bot barges in
on itself. Browsers cancel echo themselves, so WebRTC sessions default to off
(`server.echo_cancellation`; per session `audio.input.echo_cancellation` in session.update).

AEC3 (pywebrtc-audio's AudioProcessor) finds the delay between the reference and its echo by
itself, but only if the two streams are paired as they happened in real time. So the reference is
placed on the session clock where each sample starts to play at the caller (the outputs know:
Twilio and WebSocket clients play what we send in real time from when it arrives, the WebRTC track
paces itself), and inbound audio is paired with the reference at the time it arrived. The delay
AEC3 sees is then the true one: the network out and back plus the acoustic path.

Cost: ~0.1-0.2 ms of CPU per 10 ms block (docs/benchmarks.md), so it runs on the event loop.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import numpy as np
import soxr
from pywebrtc_audio import AudioProcessor

from realtime.echo_presence import EchoPresence

SNAP_S = 0.01  # a piece starting this close to where the last one ended continues it
RESYNC_S = 0.2  # inbound audio this far off its arrival time (a stall, a burst) is re-paired from it
KEEP_S = 2.0  # reference kept behind the clock when no inbound audio consumes it


def aec_rate(input_rate: int) -> int:
    """8 kHz for telephone-band input (G.711), where the audio already is; else the controller's 16 kHz."""
    return 8000 if input_rate == 8000 else 16_000


class Reference:
    """The far-end reference: pieces of output audio at `rate`, placed at sample index round(t * rate)
    of the clock. Output at another rate is resampled as one stream while its pieces are contiguous."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._pieces: deque[tuple[int, np.ndarray]] = deque()  # (start index, int16 samples), in order
        self._next = 0.0  # where the next contiguous input piece would start (fractional index)
        self._out = 0  # where the resampler's next output sample goes
        self._stream: soxr.ResampleStream | None = None
        self._src_rate: int | None = None

    def add(self, pcm: np.ndarray, rate: int, start_s: float) -> None:
        start = start_s * self.rate
        contiguous = rate == self._src_rate and abs(start - self._next) <= SNAP_S * self.rate
        if not contiguous:
            self._src_rate, self._next, self._out = rate, start, round(start)
            self._stream = soxr.ResampleStream(rate, self.rate, 1, dtype="int16") if rate != self.rate else None
        self._next += len(pcm) * self.rate / rate
        out = self._stream.resample_chunk(pcm) if self._stream is not None else pcm
        if len(out):
            # soxr's stream is time-aligned (it holds samples back, it does not shift them)
            self._pieces.append((self._out, out.astype(np.int16, copy=False)))
            self._out += len(out)

    def read(self, start: int, n: int) -> np.ndarray:
        far = np.zeros(n, dtype=np.int16)
        for begin, pcm in self._pieces:
            lo, hi = max(begin, start), min(begin + len(pcm), start + n)
            if lo < hi:
                far[lo - start:hi - start] = pcm[lo - begin:hi - begin]
        return far

    def prune(self, before: int) -> None:
        """Forget what ends before this index (it has been paired with inbound audio, or never will be)."""
        while self._pieces and self._pieces[0][0] + len(self._pieces[0][1]) <= before:
            self._pieces.popleft()

    def cut(self, at: int) -> None:
        """The output was cleared: nothing from this index on will play."""
        kept = deque((b, p[:max(0, at - b)]) for b, p in self._pieces if b < at)
        self._pieces = kept
        self._src_rate = self._stream = None


class EchoCanceller:
    """One session's canceller. The outputs call played() and clear(); the input calls cancel().
    Disabled, it passes audio through untouched and keeps no reference."""

    def __init__(self, enabled: bool = False, rate: int = 16_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.enabled, self.rate = enabled, rate
        self._reset()

    def configure(self, enabled: bool | None = None, rate: int | None = None) -> None:
        """Turn on/off or change rate (the input format changed); a change starts afresh."""
        enabled = self.enabled if enabled is None else enabled
        rate = self.rate if rate is None else rate
        if (enabled, rate) != (self.enabled, self.rate):
            self.enabled, self.rate = enabled, rate
            self._reset()

    def _reset(self) -> None:
        self._apm: AudioProcessor | None = None  # made at the first inbound audio (~0.3 ms)
        self._ref = Reference(self.rate)
        self._block = self.rate // 100  # AEC3 works in 10 ms blocks
        self._pending = np.zeros(0, dtype=np.int16)  # inbound audio short of a whole block
        self._cursor: int | None = None  # reference index paired with the next inbound sample
        self._dither = np.random.default_rng(0)
        self.presence = EchoPresence(self.rate)  # an echo-free line skips AEC3 (realtime/echo_presence.py)

    def played(self, pcm: np.ndarray, rate: int, start_s: float) -> None:
        """Output audio at `rate` that starts playing at the caller at `start_s` on the clock."""
        if self.enabled and len(pcm):
            self._ref.add(pcm, rate, start_s)
            # what inbound audio has not claimed by now it never will (a caller who sends none)
            self._ref.prune(round((self._clock() - KEEP_S) * self.rate))

    def clear(self) -> None:
        """The output was cut now: the rest of the reference will not play."""
        if self.enabled:
            self._ref.cut(round(self._clock() * self.rate))

    def cancel(self, near: np.ndarray) -> np.ndarray:
        """Inbound int16 audio at `rate`, just arrived → the same with the echo removed. Whole 10 ms
        blocks go through; a remainder waits for the next call (20 ms frames have none)."""
        if not self.enabled:
            return near
        if self._apm is None:
            self._apm = AudioProcessor(sample_rate=self.rate, echo_cancellation=True)
        buf = np.concatenate([self._pending, near]) if len(self._pending) else near
        first = round(self._clock() * self.rate) - len(buf)  # where buf's first sample was, by arrival
        if self._cursor is None or abs(self._cursor - first) > RESYNC_S * self.rate:
            self._cursor = first
        n = len(buf) // self._block * self._block
        far = self._ref.read(self._cursor, n)
        self._cursor += n
        self._ref.prune(self._cursor)
        self._pending = buf[n:].copy()
        if not n:
            return buf[:0]
        near = buf[:n]
        cleaned = self._apm.process(self._dithered(near), self._dithered(far))  # adapting all along
        self.presence.observe(near, far)
        return near.copy() if self.presence.raw_input else cleaned

    def _dithered(self, pcm: np.ndarray) -> np.ndarray:
        """±1 LSB of noise: on digital silence (no reply playing, a muted caller) AEC3 runs 10-15×
        slower (1-1.6 ms a block instead of 0.1; denormal arithmetic, presumably); -90 dBFS is inaudible."""
        noisy = pcm.astype(np.int32) + self._dither.integers(-1, 2, len(pcm), dtype=np.int32)
        return np.clip(noisy, -32768, 32767).astype(np.int16)
