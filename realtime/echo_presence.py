"""Does this line echo at all? Decides whether the session hears AEC3's output or the raw input.

AEC3 assumes an echo until it has learnt otherwise. On a line that returns none (most mobiles and
headsets cancel their own echo; the bench's phone caller sends silence) it needs 5-7 s of the bot's
speech to learn that, and meanwhile it suppresses the caller whenever the bot talks: interruptions
early in a call are not heard (docs/benchmarks.md, "Echo cancellation").

An echo is what we played, delayed and filtered, so it correlates with the reference; a caller's
voice and line noise do not. GCC-PHAT (the cross-spectrum whitened to unit magnitude) turns any
linear echo path into a peak at its delay whatever the echo's level or colour. Measured on speech
(tests/test_echo_presence.py) over 0.5 s windows while the bot talks: an echo from -6 to -40 dB
peaks at 9-48 robust standard deviations above the median lag (median ~20); noise peaks at 4-7,
another voice at 4-11. One window can land in the overlap, a run of them cannot. So:

- "echo": ECHO_CONFIRM windows within ECHO_CONFIRM_S peaked at ECHO_PROMINENCE or more *at the
  same delay* (within LAG_TOLERANCE_S). Latched for the call: AEC3 handles it. An echo path's
  delay is fixed, so its windows agree; a caller talking over the bot peaks at random delays, and
  over a long call now and then one window of double talk reaches 16-30 (seen on the bench's phone
  line: one such window latched "echo" and the caller's barge-ins were suppressed from then on).
- "no_echo": while the bot talked, the input was digital silence (a muted or echo-free digital
  line: conclusive at once), or NO_ECHO_RUN windows in a row stayed under NO_ECHO_PROMINENCE with
  the input well below the bot (a loud voice can hide a quieter echo, so loud windows decide
  nothing). The raw input then reaches the VAD and the caller is heard at once. Detection goes on:
  an echo that appears later (a switch to speakerphone) still latches "echo".
- "unknown" until then: AEC3's output, the safe side for a line that echoes.
A window counts only if the bot talked through all the audio whose echo could reach it (the window
and MAX_DELAY_S before it): a quiet input right after the bot starts proves nothing.
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

MAX_DELAY_S = 0.5  # of the echo after the reference: network back + jitter buffer + acoustic path
SILENT_WINDOW_S = 0.2  # digital silence this long while the bot talks: no echo
GCC_WINDOW_S = 0.5
SILENT_HOP_S, GCC_HOP_S = 0.1, 0.2  # how often each test runs while the bot talks
ECHO_PROMINENCE = 16.0
ECHO_CONFIRM = 2  # strong windows at one delay ...
ECHO_CONFIRM_S = 1.2  # ... within this long (a window every GCC_HOP_S)
LAG_TOLERANCE_S = 0.002  # the same delay, give or take (a chance pair lands here ~1 % of the time)
NO_ECHO_PROMINENCE = 8.0
NO_ECHO_RUN = 8  # quiet, peakless windows in a row (1.6 s of the bot talking)
FAR_ACTIVE_DBFS = -50.0  # a 20 ms block of the bot's audio this loud is speech
FAR_ACTIVE_SHARE = 0.5  # of the blocks that could echo into a window (speech has gaps) ...
# ... and no gap in them as long as the window, so that at any delay some of the bot's speech echoes into it
SILENT_DBFS = -80.0  # digital silence (μ-law's smallest step is -72 dBFS): no echo could hide in it
QUIET_BELOW_FAR_DB = 10.0  # input at least this far below the bot: no voice loud enough to hide an echo

UNKNOWN, ECHO, NO_ECHO = "unknown", "echo", "no_echo"


def dbfs(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64)) / 32768.0 ** 2 + 1e-20))


def gcc_phat_peak(far: np.ndarray, near: np.ndarray, max_lag: int) -> tuple[float, int]:
    """Peak of the whitened cross-correlation over delays 0..max_lag (`far` starts max_lag samples
    before `near` and ends with it): its prominence in robust standard deviations above the median
    delay, and its index (max_lag - index = the echo's delay in samples)."""
    nfft = 1 << (len(far) + len(near) - 1).bit_length()
    cross = np.fft.rfft(far, nfft) * np.conj(np.fft.rfft(near, nfft))
    cross /= np.abs(cross) + 1e-9
    corr = np.abs(np.fft.irfft(cross, nfft)[:max_lag + 1])
    median = np.median(corr)
    spread = 1.4826 * np.median(np.abs(corr - median))
    peak = int(corr.argmax())
    return (float((corr[peak] - median) / spread) if spread > 0 else 0.0), peak


class EchoPresence:
    """Fed each session's input as it arrived (near) and the reference paired with it (far)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.verdict = UNKNOWN
        self._block = rate // 50
        self._lag = int(MAX_DELAY_S * rate)
        self._gcc_n = int(GCC_WINDOW_S * rate)
        self._near = np.zeros(self._gcc_n)
        self._far = np.zeros(self._gcc_n + self._lag)  # ends where near ends
        self._pending_far = np.zeros(0)  # less than a block, for the activity count
        self._far_active: list[bool] = []  # per 20 ms block of the reference, recent first-to-last
        self._keep_blocks = (self._gcc_n + self._lag) // self._block
        self._silent_due = self._gcc_due = 0  # samples until each test runs again
        self.quiet_run = 0
        self._strong: list[tuple[int, int]] = []  # (sample count, lag) of recent windows over ECHO_PROMINENCE
        self._seen = 0  # input samples observed

    @property
    def raw_input(self) -> bool:
        """The caller's input may skip the canceller: this line returns no echo."""
        return self.verdict == NO_ECHO

    def observe(self, near: np.ndarray, far: np.ndarray) -> None:
        if self.verdict == ECHO or not len(near):
            return
        near, far = near.astype(np.float64), far.astype(np.float64)
        self._seen += len(near)
        self._near = np.concatenate([self._near, near])[-self._gcc_n:]
        self._far = np.concatenate([self._far, far])[-(self._gcc_n + self._lag):]
        self._count_activity(far)
        self._silent_due -= len(near)
        self._gcc_due -= len(near)
        if self._silent_due <= 0:
            self._silent_due = int(SILENT_HOP_S * self.rate)
            self._test_silence()
        if self._gcc_due <= 0 and self.verdict != ECHO:
            self._gcc_due = int(GCC_HOP_S * self.rate)
            self._test_correlation()

    def _count_activity(self, far: np.ndarray) -> None:
        buf = np.concatenate([self._pending_far, far])
        n = len(buf) // self._block * self._block
        if n:
            blocks = buf[:n].reshape(-1, self._block)
            loud = 10 * np.log10(np.mean(blocks ** 2, axis=1) / 32768.0 ** 2 + 1e-20) >= FAR_ACTIVE_DBFS
            self._far_active = (self._far_active + loud.tolist())[-self._keep_blocks:]
        self._pending_far = buf[n:]

    def _bot_talked_through(self, window: int) -> bool:
        """The reference was speech through the window and MAX_DELAY_S before it."""
        blocks = (window + self._lag) // self._block
        recent = self._far_active[-blocks:]
        if len(recent) < blocks or sum(recent) < FAR_ACTIVE_SHARE * blocks:
            return False
        gap = longest = 0
        for active in recent:
            gap = 0 if active else gap + 1
            longest = max(longest, gap)
        return longest < window // self._block

    def _test_silence(self) -> None:
        window = int(SILENT_WINDOW_S * self.rate)
        if self.verdict == UNKNOWN and self._bot_talked_through(window) \
                and dbfs(self._near[-window:]) < SILENT_DBFS:
            self._no_echo("digital silence while the bot talked")

    def _test_correlation(self) -> None:
        if not self._bot_talked_through(self._gcc_n):
            return
        near_db = dbfs(self._near)
        if near_db < SILENT_DBFS:
            return  # silence: nothing to correlate (and no echo in it)
        prominence, lag = gcc_phat_peak(self._far, self._near, self._lag)
        if prominence >= ECHO_PROMINENCE:
            self.quiet_run = 0
            self._confirm_echo(lag, prominence)
        elif prominence < NO_ECHO_PROMINENCE and near_db <= dbfs(self._far[self._lag:]) - QUIET_BELOW_FAR_DB:
            self.quiet_run += 1
            if self.quiet_run >= NO_ECHO_RUN:
                self._no_echo(f"{NO_ECHO_RUN} quiet windows without a peak")
        else:
            self.quiet_run = 0

    def _no_echo(self, why: str) -> None:
        if self.verdict == NO_ECHO:
            return  # decided already; detection goes on for an echo that appears later
        log.info("echo presence: no echo (%s); the caller's input skips AEC3", why)
        self.verdict = NO_ECHO

    def _confirm_echo(self, lag: int, prominence: float) -> None:
        """Latch "echo" once ECHO_CONFIRM strong windows agree on the delay."""
        since = self._seen - int(ECHO_CONFIRM_S * self.rate)
        tolerance = LAG_TOLERANCE_S * self.rate
        self._strong = [(t, l) for t, l in self._strong if t >= since] + [(self._seen, lag)]
        agreeing = sum(abs(l - lag) <= tolerance for _, l in self._strong)
        if agreeing >= ECHO_CONFIRM:
            log.info("echo presence: echo at %.0f ms (window peak %.1f, %d windows agree); AEC3 handles "
                     "this call's input", 1000 * (self._lag - lag) / self.rate, prominence, agreeing)
            self.verdict = ECHO
