"""Speech over a reply that carries no words (a cough, "mm-hm", "嗯") lets it play on from where
the caller stopped hearing it; words stop it (tests/test_controller.py). Fake stages, audio time."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from context.history import Context
from controller.config import ControllerConfig
from controller.controller import Controller, Stages
from controller.events import ResponseDone, ResponseResumed, StateChanged, TurnMetrics
from controller.turn_policy import is_false_interruption
from decoder.fake import FakeDecoder
from llm.fake import FakeLLM
from streaming_tokenizer.base import UserInput
from streaming_tokenizer.fake import FakeTokenizer
from tests.fakes import LOUD, QUIET, FakeOutput, frames, wait_until
from vad.energy import EnergyVad

REPLY = "One two three four. Five six seven eight. Nine ten eleven twelve."


class ScriptedTokenizer(FakeTokenizer):
    """The fake tokenizer, except that the interrupting turn says `script`."""

    script: str | None = None

    async def finalize(self) -> UserInput:
        user = await super().finalize()
        return user if self.script is None else UserInput(text=self.script, speech_seconds=user.speech_seconds)


def make(resume: bool = True):
    events: list = []
    out = FakeOutput(auto_play=False)
    tok = ScriptedTokenizer()
    llm = FakeLLM(reply=REPLY, token_delay_s=0.001)
    cfg = ControllerConfig(resume_after_false_interruption=resume)
    ctrl = Controller(Stages(EnergyVad(), tok, llm, FakeDecoder()), Context("sys"), out, events.append, cfg)
    return ctrl, out, tok, llm, events


async def reply_playing(ctrl, out, llm) -> float:
    """A turn, its reply generated; the caller has heard the first clause. Returns that time."""
    await frames(ctrl, LOUD, 400)
    await frames(ctrl, QUIET, 700)
    await wait_until(lambda: llm.streams and llm.streams[0].finished and len(out.chunks) >= 3)
    out.played = out.chunks[0].seconds + out.chunks[1].seconds / 2  # half-way into the second chunk
    return out.played


@pytest.mark.parametrize("said", ["", "Mm-hm.", "嗯", "okay"])
async def test_a_wordless_interruption_resumes_the_reply_where_it_was_cut(said: str) -> None:
    ctrl, out, tok, llm, events = make()
    heard = await reply_playing(ctrl, out, llm)
    sent = list(out.chunks)
    tok.script = said
    await frames(ctrl, LOUD, 300)  # a cough: a barge-in by length
    assert ctrl.state.value == "user_speaking" and out.cleared  # the caller hears it stop at once
    await frames(ctrl, QUIET, 700)
    await wait_until(lambda: any(isinstance(e, ResponseResumed) for e in events))
    (resumed,) = [e for e in events if isinstance(e, ResponseResumed)]
    assert resumed.resumed_at_s == pytest.approx(heard) and resumed.heard == said
    assert ctrl.state.value == "bot_replying"
    # What plays next is exactly the audio after the cut, then the rest of the reply.
    replayed = np.concatenate([c.pcm for c in out.chunks[len(sent):]])
    unheard = np.concatenate([c.pcm for c in sent])[int(heard * sent[0].sample_rate):]
    assert np.array_equal(replayed[: len(unheard)], unheard)
    assert not [e for e in events if isinstance(e, ResponseDone)]
    out.finish_playing()
    await wait_until(lambda: ctrl.state.value == "silence")
    (done,) = [e for e in events if isinstance(e, ResponseDone)]
    assert done.status == "completed" and done.text == REPLY
    (metrics,) = [e for e in events if isinstance(e, TurnMetrics)]  # its own turn's figures, not the cough's
    assert metrics.values["eot_to_first_audio_ms"] >= 0
    assert [t.role for t in ctrl.context.turns] == ["user", "assistant"]  # the cough is no turn
    assert ctrl.context.turns[1].text == REPLY
    tok.script = None
    before = len(llm.streams)
    await frames(ctrl, LOUD, 400)  # and the conversation goes on
    await frames(ctrl, QUIET, 700)
    await wait_until(lambda: len(llm.streams) > before and llm.streams[-1].finished)
    assert [m.role for m in llm.streams[-1].messages] == ["system", "user", "assistant", "user"]


async def test_without_the_option_any_barge_in_ends_the_reply_at_once() -> None:
    ctrl, out, tok, llm, events = make(resume=False)
    await reply_playing(ctrl, out, llm)
    tok.script = ""
    await frames(ctrl, LOUD, 300)
    done = [e for e in events if isinstance(e, ResponseDone)]
    assert done and done[0].status == "cancelled" and done[0].text.startswith("One two")
    await frames(ctrl, QUIET, 700)
    assert not [e for e in events if isinstance(e, ResponseResumed)]


async def test_a_resumed_reply_interrupted_for_real_keeps_all_it_played() -> None:
    ctrl, out, tok, llm, events = make()
    await reply_playing(ctrl, out, llm)
    tok.script = ""
    await frames(ctrl, LOUD, 300)
    await frames(ctrl, QUIET, 700)
    await wait_until(lambda: any(isinstance(e, ResponseResumed) for e in events))
    out.played = 0.5  # half a second after the resume...
    tok.script = "Stop please"
    await frames(ctrl, LOUD, 300)
    await frames(ctrl, QUIET, 700)
    await wait_until(lambda: [e for e in events if isinstance(e, ResponseDone)])
    (done,) = [e for e in events if isinstance(e, ResponseDone)]
    assert done.status == "cancelled" and done.reason == "barge_in"
    first_chunks = ctrl.context.turns[1].speech_seconds
    heard_before = [e for e in events if isinstance(e, ResponseResumed)][0].resumed_at_s
    assert first_chunks == pytest.approx(heard_before + 0.5)  # the heard time spans the resume


@pytest.mark.parametrize("text, voiced_ms, wordless", [
    ("I", 400, True), ("Emma Chen.", 500, True), ("I", 900, False), ("No.", 400, False), ("Wait!", 300, False),
    ("停", 300, False), ("Stop it", 500, False), ("Tell me more", 500, False), ("I", None, False),
])
def test_a_short_sound_named_as_a_word_or_two_is_wordless(text: str, voiced_ms, wordless: bool) -> None:
    assert is_false_interruption(text, voiced_ms) is wordless


@pytest.mark.parametrize("text, wordless", [
    ("", True), (" . ", True), ("Mm-hm.", True), ("Uh-huh", True), ("嗯。", True), ("Yeah, okay.", True),
    ("Wait", False), ("No, stop.", False), ("Okay, but what about Paris?", False), ("等一下", False),
])
def test_what_counts_as_wordless(text: str, wordless: bool) -> None:
    assert is_false_interruption(text) is wordless


# -- with the real VAD and ASR, on synthesized sounds ---------------------------------------------

@pytest.fixture(scope="module")
def real_ears(tmp_path_factory):
    """Silero VAD and Whisper base, as in the embedded default."""
    from core.stages import BuildEnv, build_stage

    env = BuildEnv(tmp_path_factory.mktemp("models"))
    return build_stage("vad", "silero", {}, env), build_stage("tokenizer", "whisper", {"language": "en"}, env)


def cough(seconds: float = 0.45) -> np.ndarray:
    """A cough-like burst: loud broadband noise with a fast attack and a decay."""
    from tests.speech_util import noise

    burst = noise(seconds, -12, seed=3).astype(np.float64)
    envelope = np.exp(-np.arange(len(burst)) / (0.12 * 16000))
    return (burst * envelope).astype(np.int16)


@pytest.mark.integration
@pytest.mark.parametrize("sound, resumes", [("mm-hm", True), ("cough", True), ("words", False)])
async def test_real_sounds_over_a_reply(real_ears, sound: str, resumes: bool) -> None:
    from tests.speech_util import frames as frames_of, piper, silence

    vad_factory, asr = real_ears
    events: list = []
    out = FakeOutput(auto_play=False)
    llm = FakeLLM(reply=REPLY, token_delay_s=0.001)
    cfg = ControllerConfig(pause_ms=70, end_of_turn_ms=650)
    ctrl = Controller(Stages(vad_factory.create(), asr.create(), llm, FakeDecoder()), Context("sys"), out,
                      events.append, cfg)

    async def say(pcm: np.ndarray) -> None:
        for f in frames_of(pcm):
            ctrl.push_audio(f)
            await asyncio.sleep(0)

    try:
        await say(np.concatenate([silence(0.3), piper("Can you tell me a long story?"), silence(1.0)]))
        await wait_until(lambda: ctrl.state.value == "bot_replying" and len(out.chunks) >= 3, timeout=60)
        out.played = out.chunks[0].seconds
        over = {"mm-hm": piper("Mm-hmm."), "cough": cough(), "words": piper("Wait, stop, tell me a joke.")}[sound]
        await say(np.concatenate([over, silence(1.2)]))
        barged = "barge_in" in [e.reason for e in events if isinstance(e, StateChanged)]
        if not barged:  # the VAD did not take it for speech at all: nothing to recover from
            assert sound == "cough" and not [e for e in events if isinstance(e, ResponseDone)]
            return
        await wait_until(lambda: any(isinstance(e, (ResponseResumed, ResponseDone)) for e in events), timeout=60)
        resumed = [e for e in events if isinstance(e, ResponseResumed)]
        assert bool(resumed) is resumes, [e for e in events if isinstance(e, ResponseDone)]
        if resumes:
            assert ctrl.state.value == "bot_replying" and len(ctrl.context.turns) == 1
        else:
            done = [e for e in events if isinstance(e, ResponseDone)]
            assert done[0].status == "cancelled" and done[0].reason == "barge_in"
    finally:
        await ctrl.close()


async def test_a_held_reply_stops_generating_until_it_resumes() -> None:
    """While the interruption's words are unknown the reply takes no more text (so a real
    interruption costs no more synthesis than the decoder's lookahead); resumed, it goes on."""
    events: list = []
    out = FakeOutput(auto_play=False)
    tok = ScriptedTokenizer()
    llm = FakeLLM(reply=" ".join(f"word{i}." for i in range(400)), token_delay_s=0.002)
    ctrl = Controller(Stages(EnergyVad(), tok, llm, FakeDecoder()), Context("sys"), out, events.append,
                      ControllerConfig())
    await frames(ctrl, LOUD, 400)
    await frames(ctrl, QUIET, 700)
    await wait_until(lambda: len(out.chunks) >= 3)
    out.played = out.chunks[0].seconds
    tok.script = ""
    await frames(ctrl, LOUD, 300)  # barge-in: the reply is held
    stream = llm.streams[-1]
    await asyncio.sleep(0.05)
    sent = stream.pieces_sent
    await asyncio.sleep(0.3)  # 150 token delays: a generating reply would take them all
    assert stream.pieces_sent - sent <= 2 and not stream.finished
    await frames(ctrl, QUIET, 700)  # no words: resumed
    await wait_until(lambda: stream.pieces_sent > sent + 20)
    await ctrl.close()
