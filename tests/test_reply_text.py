"""A reply's spoken text ends at a sentence end: max_reply_sentences, and a reply cut at max_tokens."""
from __future__ import annotations

import pytest

from context.history import Context
from controller.config import ControllerConfig
from controller.controller import Controller, Stages
from controller.events import FunctionCallDone, ResponseDone, TranscriptDelta
from controller.reply_text import SentenceGate
from decoder.fake import FakeDecoder
from llm.fake import FakeLLM
from streaming_tokenizer.fake import FakeTokenizer
from tests.fakes import LOUD, QUIET, FakeOutput, frames, wait_until
from vad.energy import EnergyVad


def run(gate: SentenceGate, pieces: list[str], cut: bool = False) -> list[str]:
    """What the gate passes on after each piece, then at the end."""
    return [gate.feed(p) for p in pieces] + [gate.finish(cut)]


def test_the_first_sentence_passes_as_it_comes_later_ones_whole():
    out = run(SentenceGate(), ["Sure", " thing", ", here", " it is.", " Paris", " is", " nice.", " Go", " in", " May."])
    # The first sentence's words go on at once (the decoder's first clause starts early)...
    assert out[:3] == ["Sure", " thing", ", here"]
    assert out[3] == " it is."  # a '.' at the very end is no sentence end yet: it may be the "3" of "3.5"
    # Later text waits for its sentence end, then goes on whole.
    assert out[4:8] == ["", "", "", " Paris is nice."]
    assert "".join(out) == "Sure thing, here it is. Paris is nice. Go in May."
    assert out[-1] == " Go in May."  # the last sentence, at the end of the stream


def test_max_sentences_ends_the_reply_and_drops_the_rest():
    gate = SentenceGate(max_sentences=2)
    out = run(gate, ["One. ", "Two, ", "still two! ", "Three. ", "Four."])
    assert "".join(out) == "One. Two, still two!"
    assert gate.full and gate.sentences == 2


def test_a_reply_cut_at_max_tokens_loses_only_its_unfinished_sentence():
    gate = SentenceGate()
    out = run(gate, ["Pack light. ", "Bring a hat ", "and some"], cut=True)
    assert "".join(out) == "Pack light."
    assert gate.dropped.strip() == "Bring a hat and some"
    # Cut right after a sentence end: the sentence is whole and kept.
    assert "".join(run(SentenceGate(), ["Pack light. ", "Bring a hat."], cut=True)) == "Pack light. Bring a hat."
    # Not cut: the last words are spoken even without punctuation.
    assert "".join(run(SentenceGate(), ["Pack light. ", "Bring a hat"])) == "Pack light. Bring a hat"


def test_a_first_sentence_cut_short_was_already_passed_on():
    # Holding the first sentence would delay every reply; a reply cut inside it keeps what was said.
    assert "".join(run(SentenceGate(), ["A very long ", "first"], cut=True)) == "A very long first"


def test_numbers_abbreviations_and_chinese():
    gate = SentenceGate(max_sentences=2)
    out = "".join(run(gate, ["Hi. ", "It costs 3", ".5 dollars, ask Dr. Smith. ", "More."]))
    assert out == "Hi. It costs 3.5 dollars, ask Dr. Smith."
    assert "".join(run(SentenceGate(max_sentences=2), ["你好。", "明天", "会下雨。", "带伞吧。"])) == "你好。明天会下雨。"


def test_a_long_sentence_passes_on_past_hold_chars():
    gate = SentenceGate(hold_chars=20)
    assert gate.feed("Yes. ") == "Yes."
    assert gate.feed("a b c d e ") == ""
    assert gate.feed("f g h i j k l m ") != ""  # past 20 characters with no end: the decoder would cut it too


def make(cfg: ControllerConfig, llm: FakeLLM):
    events: list = []
    out = FakeOutput()
    ctx = Context(system_prompt="sys")
    ctrl = Controller(Stages(EnergyVad(), FakeTokenizer(), llm, FakeDecoder()), ctx, out, events.append, cfg,
                      session_id="s-1")
    return ctrl, ctx, events


async def one_turn(ctrl, events) -> ResponseDone:
    await frames(ctrl, LOUD, 600)
    await frames(ctrl, QUIET, 900)
    await wait_until(lambda: any(isinstance(e, ResponseDone) for e in events))
    return next(e for e in events if isinstance(e, ResponseDone))


@pytest.mark.parametrize("speculation", [True, False])
async def test_a_reply_ends_after_max_reply_sentences_and_its_llm_stream_is_closed(speculation: bool):
    llm = FakeLLM(reply="First one. Second one here. Third one. " + "More words " * 100, token_delay_s=0.002)
    ctrl, ctx, events = make(ControllerConfig(max_reply_sentences=2, speculation=speculation), llm)
    done = await one_turn(ctrl, events)
    assert done.text == "First one. Second one here."
    assert ctx.turns[-1].text == "First one. Second one here."
    played = llm.streams[-1]
    assert played.closed_early and played.pieces_sent < 10  # the server stopped generating
    await ctrl.close()


async def test_a_reply_cut_by_the_token_limit_does_not_speak_its_last_fragment():
    llm = FakeLLM(reply="Pack light for the beach. Bring a hat and some sunscreen too.", max_tokens=9,
                  token_delay_s=0.002)
    ctrl, ctx, events = make(ControllerConfig(), llm)
    done = await one_turn(ctrl, events)
    assert done.text == "Pack light for the beach."  # not "... Bring a hat and"
    assert done.status == "incomplete"  # Realtime: status_details.reason max_output_tokens
    assert ctx.turns[-1].text == "Pack light for the beach."
    await ctrl.close()


async def test_with_tools_offered_a_call_after_the_last_sentence_still_comes():
    llm = FakeLLM(tool_call={"name": "get_weather", "arguments": {"city": "Paris"}},
                  tool_preamble="Sure. Let me check that. One more thing.", token_delay_s=0.002)
    ctrl, ctx, events = make(ControllerConfig(max_reply_sentences=2), llm)
    ctrl.client_tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    await frames(ctrl, LOUD, 600)
    await frames(ctrl, QUIET, 900)
    await wait_until(lambda: any(isinstance(e, FunctionCallDone) for e in events))
    call = next(e for e in events if isinstance(e, FunctionCallDone)).call
    assert call.name == "get_weather" and '"Paris"' in call.arguments
    said = "".join(e.delta for e in events if isinstance(e, TranscriptDelta))
    assert said.split() == ["Sure.", "Let", "me", "check", "that."]  # the third sentence is not spoken
    await ctrl.close()
