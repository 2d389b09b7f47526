"""The echo canceller (realtime/echo.py) on real speech, with the reference placed by the clock."""
from __future__ import annotations

import numpy as np
import pytest
import soxr

from bench.echo_sim import EchoPath
from realtime import g711
from realtime.audio import G711Input, PcmInput, WebRtcInput
from realtime.echo import EchoCanceller, Reference, aec_rate
from tests.speech_util import espeak

BOT = ("Thanks for calling. Your order shipped this morning and should arrive on Thursday. "
       "Is there anything else I can help you with today?")
CALLER = "Wait, stop, I need to change the delivery address please."


class Clock:
    def __init__(self) -> None:
        self.t = 500.0

    def __call__(self) -> float:
        return self.t


def speech(text: str, rate: int, voice: str = "en-us") -> np.ndarray:
    pcm = espeak(text, voice)  # 16 kHz
    return pcm if rate == 16_000 else soxr.resample(pcm, 16_000, rate).astype(np.int16)


def db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(x.astype(float) ** 2) + 1e-9)


def call(rate: int, far: np.ndarray, near_extra: np.ndarray, path: EchoPath):
    """A call through the canceller: far plays 20 ms at a time; the microphone hears its echo
    (+ near_extra), which arrives 20 ms at a time."""
    clock, step = Clock(), rate // 50
    ec = EchoCanceller(True, rate, clock=clock)
    echo = np.convolve(far.astype(float), path.impulse_response(rate))[:len(far)]
    mic = np.clip(echo + near_extra, -32768, 32767).astype(np.int16)
    out = []
    for i in range(0, len(far) - step + 1, step):
        ec.played(far[i:i + step], rate, clock.t)
        clock.t += step / rate
        out.append(ec.cancel(mic[i:i + step]))
    return np.concatenate(out), echo


@pytest.mark.parametrize("rate", [8000, 16_000])
@pytest.mark.parametrize("delay_ms", [40, 200])
def test_echo_of_real_speech_is_suppressed_after_convergence(rate, delay_ms):
    far = speech(BOT, rate)
    out, echo = call(rate, far, np.zeros(len(far)), EchoPath(delay_ms, -6))
    half = len(out) // 2  # AEC3 has converged by then (it takes well under a second)
    erle = db(echo[half:len(out)]) - db(out[half:])
    assert erle >= 20, f"ERLE {erle:.1f} dB"


def test_the_callers_own_speech_passes_during_the_echo():
    rate = 8000
    far = speech(BOT, rate)
    caller = speech(CALLER, rate, voice="en-gb+f3")
    start = len(far) // 2  # after convergence, over the bot's speech
    extra = np.zeros(len(far))
    extra[start:start + len(caller)] = caller[:len(far) - start]
    out, echo = call(rate, far, extra, EchoPath(100, -12))
    residual, _ = call(rate, far, np.zeros(len(far)), EchoPath(100, -12))  # the same without the caller
    window = slice(start, min(len(out), start + len(caller)))
    assert db(out[window]) > db(caller[:window.stop - start]) - 6  # double talk: the caller is kept
    assert db(out[window]) > db(residual[window]) + 20  # ... and is nearly all that is left


def test_reference_pairs_by_time_not_by_send_order():
    """Audio sent ahead of time (Twilio, WebSocket clients buffer it) is paired when it plays."""
    rate = 8000
    far = speech(BOT, rate)[:4 * rate]
    ahead = Reference(rate)
    ahead.add(far, rate, 1.0)  # all of it at once, to play from t = 1 s
    assert np.array_equal(ahead.read(rate, 160), far[:160])
    assert np.array_equal(ahead.read(rate + 8000, 160), far[8000:8160])
    assert not np.any(ahead.read(0, rate))  # before it plays: silence
    ahead.cut(rate + 4000)  # cleared half a second in: the rest never plays
    assert not np.any(ahead.read(rate + 4000, 1000)) and np.array_equal(ahead.read(rate, 100), far[:100])


def test_reference_resampled_as_one_stream():
    """WebSocket output at 24 kHz, cancelled at 16 kHz: contiguous pieces make one stream."""
    pcm = (np.random.default_rng(1).normal(0, 3000, 24_000)).astype(np.int16)
    ref = Reference(16_000)
    for i in range(0, 24_000, 480):  # 20 ms pieces, each starting where the last ended
        ref.add(pcm[i:i + 480], 24_000, 2.0 + i / 24_000)
    whole = soxr.resample(pcm, 24_000, 16_000).astype(np.int16)
    got = ref.read(32_000, 15_000)
    assert np.max(np.abs(got.astype(int) - whole[:15_000])) <= 4


def test_inbound_stall_and_burst_resync_to_arrival():
    clock = Clock()
    ec = EchoCanceller(True, 8000, clock=clock)
    ec.cancel(np.zeros(160, np.int16))
    assert ec._cursor == round(clock.t * 8000)
    clock.t += 0.02
    ec.cancel(np.zeros(160, np.int16))  # on time: paired by count
    assert ec._cursor == round(clock.t * 8000)
    clock.t += 1.0  # a second of nothing, then the caller resumes: re-paired from its arrival
    ec.cancel(np.zeros(160, np.int16))
    assert ec._cursor == round(clock.t * 8000)


def test_disabled_is_a_pass_through_and_changes_start_afresh():
    ec = EchoCanceller(False, 16_000)
    pcm = (np.arange(320) * 50).astype(np.int16)
    assert ec.cancel(pcm) is pcm
    ec.played(pcm, 16_000, 0.0)
    ec.configure(enabled=True)
    assert ec.enabled and len(ec.cancel(pcm)) == 320
    ec.configure(rate=8000)
    assert ec.rate == 8000 and len(ec.cancel(pcm[:160])) == 160
    assert len(ec.cancel(pcm[:100])) == 80 and len(ec.cancel(pcm[:60])) == 80  # whole 10 ms blocks


def test_inputs_cancel_at_the_right_rate():
    assert aec_rate(8000) == 8000 and aec_rate(24_000) == aec_rate(48_000) == 16_000
    seen: list[int] = []

    class Spy(EchoCanceller):
        def cancel(self, near):
            seen.append(len(near))
            return near

    g711_in = G711Input(g711.MULAW)
    g711_in.echo = Spy(True, 8000)
    g711_in.frames(np.zeros(160, np.int16))
    assert seen == [160]  # at 8 kHz, before the resampler
    seen.clear()
    pcm_in = PcmInput(24_000)
    pcm_in.echo = Spy(True, 16_000)
    frames = pcm_in.frames(np.zeros(2400, np.int16))
    assert seen == [sum(len(f) for f in frames)] and all(len(f) == 320 for f in frames)  # whole 16 kHz frames
    assert WebRtcInput(Spy(True, 16_000)).echo is not None
