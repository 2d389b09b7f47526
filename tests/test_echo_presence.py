"""Echo presence (realtime/echo_presence.py): an echo-free line skips AEC3, an echoing one never does."""
from __future__ import annotations

import numpy as np
import pytest
import soxr

from bench.echo_sim import EchoPath
from realtime import g711
from realtime.echo import EchoCanceller
from realtime.echo_presence import ECHO, NO_ECHO, UNKNOWN, EchoPresence
from tests.speech_util import espeak

RATE, STEP = 8000, 160
BOT = ("Thanks for calling. Your order shipped this morning and should arrive on Thursday. "
       "Is there anything else I can help you with today?")
CALLER = "Wait, stop, I need to change the delivery address please."


def speech(text: str, voice: str = "en-us") -> np.ndarray:
    return soxr.resample(espeak(text, voice), 16_000, RATE).astype(np.float64)


def mulaw(x: np.ndarray) -> np.ndarray:
    pcm = np.clip(np.round(x), -32768, 32767).astype(np.int16)
    return g711.decode(g711.encode(pcm, g711.MULAW), g711.MULAW)


def noise(n: int, dbfs: float, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 32768 * 10 ** (dbfs / 20), n)


def verdicts(far: np.ndarray, near: np.ndarray) -> list[str]:
    """The verdict after each 20 ms of a call where `far` plays and `near` comes back."""
    presence, out = EchoPresence(RATE), []
    far16 = np.clip(np.round(far), -32768, 32767).astype(np.int16)
    for i in range(0, len(far) - STEP + 1, STEP):
        presence.observe(near[i:i + STEP], far16[i:i + STEP])
        out.append(presence.verdict)
    return out


def seconds_until(verdict: str, trace: list[str]) -> float | None:
    return trace.index(verdict) * STEP / RATE if verdict in trace else None


@pytest.fixture(scope="module")
def bot() -> np.ndarray:
    return speech(BOT)


@pytest.fixture(scope="module")
def caller() -> np.ndarray:
    return speech(CALLER, "en-gb+f3")


@pytest.mark.parametrize("delay_ms", [40, 200, 400])
@pytest.mark.parametrize("level_db", [-6, -20, -40])
def test_an_echo_is_found_and_never_taken_for_no_echo(bot, delay_ms, level_db):
    echo = np.convolve(bot, EchoPath(delay_ms, level_db).impulse_response())[:len(bot)]
    trace = verdicts(bot, mulaw(echo + noise(len(bot), -75)))
    assert NO_ECHO not in trace
    found = seconds_until(ECHO, trace)
    assert found is not None and found <= 2.5, found


def test_a_faint_echo_in_line_noise_is_never_taken_for_no_echo(bot):
    """-40 dB of echo 5 dB over the noise: too faint to be sure of either; AEC3 stays on."""
    echo = np.convolve(bot, EchoPath(100, -40).impulse_response())[:len(bot)]
    assert NO_ECHO not in verdicts(bot, mulaw(echo + noise(len(bot), -65)))


def test_an_echo_under_a_caller_talking_from_the_start_is_never_taken_for_no_echo(bot, caller):
    echo = np.convolve(bot, EchoPath(100, -20).impulse_response())[:len(bot)]
    near = echo.copy()
    near[:len(caller)] += caller[:len(bot)]
    assert NO_ECHO not in verdicts(bot, mulaw(near))


def test_a_silent_line_is_echo_free_once_the_bot_has_talked_past_the_longest_delay(bot):
    trace = verdicts(bot, mulaw(np.zeros(len(bot))))
    found = seconds_until(NO_ECHO, trace)
    # the silent window (0.2 s) and the longest echo delay (0.5 s) must have passed, no more than a hop later
    assert found is not None and 0.7 <= found <= 1.0, found
    assert ECHO not in trace


def test_a_noisy_echo_free_line_is_found_echo_free(bot):
    trace = verdicts(bot, mulaw(noise(len(bot), -50)))
    found = seconds_until(NO_ECHO, trace)
    assert found is not None and found <= 4.0, found
    assert ECHO not in trace


def test_a_caller_talking_over_the_bot_is_not_an_echo(bot, caller):
    near = noise(len(bot), -55)
    near[RATE:RATE + len(caller)] += caller[:len(bot) - RATE]
    assert ECHO not in verdicts(bot, mulaw(near))


def test_an_echo_appearing_later_still_latches(bot):
    """A switch to speakerphone: the line was silent (no echo), then echoes."""
    echo = np.convolve(bot, EchoPath(100, -12).impulse_response())[:len(bot)]
    near = echo.copy()
    near[:int(2.5 * RATE)] = 0
    trace = verdicts(bot, mulaw(near))
    assert seconds_until(NO_ECHO, trace) < 2.5 <= seconds_until(ECHO, trace) <= 4.0


def test_nothing_is_decided_while_the_bot_is_silent():
    quiet = np.zeros(3 * RATE)
    assert set(verdicts(quiet, mulaw(quiet))) == {UNKNOWN}


def test_on_an_echo_free_line_the_caller_is_heard_over_the_bots_first_reply(bot, caller):
    """The defect this fixes: AEC3, unconverged, suppressed the caller while the bot talked."""
    clock = [100.0]
    ec = EchoCanceller(True, RATE, clock=lambda: clock[0])
    start = RATE  # the caller talks over the first reply, 1 s into it
    near = np.zeros(len(bot))
    near[start:start + len(caller)] = caller[:len(bot) - start]
    mic = mulaw(near)
    far = bot.astype(np.int16)
    out = []
    for i in range(0, len(bot) - STEP + 1, STEP):
        ec.played(far[i:i + STEP], RATE, clock[0])
        clock[0] += STEP / RATE
        out.append(ec.cancel(mic[i:i + STEP]))
    heard = np.concatenate(out)[start:start + len(caller)]
    sent = mic[start:start + len(heard)]
    assert ec.presence.verdict == NO_ECHO
    assert np.array_equal(heard, sent)  # all of it, untouched


BOT_LONG = ["Paris is a wonderful city to visit in the spring.", "The museums are open late on Fridays.",
            "You can take the train from the airport to the center in about forty minutes.",
            "Many cafes serve breakfast until noon, and the parks are lovely in the morning.",
            "Would you like me to suggest a few hotels near the river?"]
CALLER_LONG = ["Actually, wait, I would rather go somewhere warm.", "No, not Paris, somewhere with a beach.",
               "Can you tell me about flights to Lisbon instead?", "Hold on, what about the weather there?",
               "Sorry, let me think about the dates first."]


@pytest.mark.parametrize("caller_voice", ["piper", "espeak"])
def test_long_double_talk_in_the_bots_own_voice_is_not_an_echo(caller_voice):
    """Minutes of a caller talking over the bot. Any one window of double talk can peak as high as
    an echo (16-30, seen on the bench's phone line, where the caller speaks in the bot's own piper
    voice); an echo's windows agree on one delay, double talk's do not."""
    from tests.speech_util import piper

    def say(text: str) -> np.ndarray:
        audio = piper(text) if caller_voice == "piper" else espeak(text, "en-us")
        return soxr.resample(audio, 16_000, RATE).astype(np.float64)

    bot = np.concatenate([soxr.resample(piper(t), 16_000, RATE).astype(np.float64) for t in BOT_LONG] * 3)
    near = noise(len(bot), -60)
    at = int(0.15 * RATE)
    for k in range(1000):
        utterance = say(CALLER_LONG[k % len(CALLER_LONG)])
        if at + len(utterance) > len(bot):
            break
        near[at:at + len(utterance)] += utterance
        at += len(utterance) + int(0.2 * RATE)
    assert ECHO not in verdicts(bot, mulaw(near))
