"""The end-of-turn policy (controller/turn_policy.py) and the controller asking the turn model
at each pause; the Realtime API's semantic_vad mapped onto it. Fake turn model; audio time."""
from __future__ import annotations

import numpy as np
import pytest

from context.history import Context
from controller.config import ControllerConfig
from controller.controller import Controller, Stages
from controller.events import StateChanged, TurnJudged
from controller.turn_policy import EAGERNESS, hinted_wait_ms, model_wait_ms
from decoder.fake import FakeDecoder
from llm.fake import FakeLLM
from streaming_tokenizer.fake import FakeTokenizer
from tests.fakes import LOUD, QUIET, FakeOutput, frames, wait_until
from tests.realtime_util import fake_config, running_server, utterance, ws_client
from vad.energy import EnergyVad
from vad.fake_turn import FakeTurnModel, Options

CFG = ControllerConfig(pause_ms=70, end_of_turn_ms=650, max_end_of_turn_ms=1500)


@pytest.mark.parametrize("eagerness", list(EAGERNESS))
def test_a_finished_sounding_pause_gets_the_eagerness_wait(eagerness: str) -> None:
    cfg = CFG.model_copy(update={"eagerness": eagerness})
    threshold, short = EAGERNESS[eagerness]
    assert model_wait_ms(cfg, 0.99) == short
    assert model_wait_ms(cfg, threshold) == short
    assert model_wait_ms(cfg, threshold - 0.01) == 650  # undecided: the fixed wait


def test_a_clearly_unfinished_pause_waits_longer_up_to_the_cap() -> None:
    assert model_wait_ms(CFG, 0.04) > 650
    assert model_wait_ms(CFG, 0.01) > model_wait_ms(CFG, 0.04)
    assert model_wait_ms(CFG, 0.0) == 1500


def test_transcript_hints_only_lengthen_a_models_wait() -> None:
    assert hinted_wait_ms(CFG, 250, "I want a pizza and", model_spoke=True) == int(650 * 1.6)
    assert hinted_wait_ms(CFG, 250, "Is it raining?", model_spoke=True) == 250
    assert hinted_wait_ms(CFG, 650, "Is it raining?", model_spoke=False) < 650  # no model: as before


def test_a_trailing_word_heard_before_the_model_answers_still_counts() -> None:
    from controller.turns import TurnDetector

    detector = TurnDetector(CFG)
    detector.new_pause()
    detector.hint("I want a pizza and")  # the transcript came back first
    assert detector.judged(0.99) == int(650 * 1.6)  # "finished" by intonation, but "and…"
    detector.new_pause()
    assert detector.judged(0.99) == EAGERNESS["auto"][1]


def make(turn: FakeTurnModel | None, cfg: ControllerConfig = CFG, llm: FakeLLM | None = None):
    events: list = []
    llm = llm or FakeLLM(reply="Sure.", token_delay_s=0.001)
    stages = Stages(EnergyVad(), FakeTokenizer(), llm, FakeDecoder(), turn=turn)
    ctrl = Controller(stages, Context("sys"), FakeOutput(), events.append, cfg, session_id="s")
    return ctrl, events


async def silence_until_end_of_turn(ctrl, limit_ms: int = 3000) -> int:
    """Feed silence until the turn ends; the silence it took (ms of audio)."""
    for fed in range(0, limit_ms, 20):
        if ctrl.state.value not in ("user_speaking", "user_paused"):
            return fed
        await frames(ctrl, QUIET, 20)
    raise AssertionError("the turn never ended")


async def test_finished_turn_ends_after_the_short_wait() -> None:
    model = FakeTurnModel(Options(probability=0.95))
    ctrl, events = make(model)
    await frames(ctrl, LOUD, 800)
    took = await silence_until_end_of_turn(ctrl)
    judged = [e for e in events if isinstance(e, TurnJudged)]
    assert model.calls == 1 and judged[0].wait_ms == EAGERNESS["auto"][1]
    assert took <= EAGERNESS["auto"][1] + 60 < 650  # a frame or two of VAD/loop slack
    assert "bot_replying" in [e.state for e in events if isinstance(e, StateChanged)]


async def test_unfinished_turn_holds_the_floor_past_the_fixed_wait() -> None:
    ctrl, events = make(FakeTurnModel(Options(probability=0.0)))
    await frames(ctrl, LOUD, 800)
    took = await silence_until_end_of_turn(ctrl)
    assert took >= 1500 - 20  # the cap, not 650


async def test_without_a_model_or_with_server_vad_the_fixed_wait_holds() -> None:
    for turn, semantic in ((None, True), (FakeTurnModel(Options(probability=0.95)), False)):
        ctrl, events = make(turn, CFG.model_copy(update={"semantic_turn": semantic}))
        await frames(ctrl, LOUD, 800)
        took = await silence_until_end_of_turn(ctrl)
        assert 650 - 20 <= took <= 650 + 60
        assert not [e for e in events if isinstance(e, TurnJudged)]


async def test_each_pause_is_judged_afresh_and_a_late_answer_is_ignored() -> None:
    """The model hears the whole turn so far at every pause; speech that resumes makes the
    pending answer moot, and the next pause starts from the fixed wait again."""
    model = FakeTurnModel(Options(loudness_below=3000))  # the quiet ending sounds finished
    ctrl, events = make(model)
    await frames(ctrl, LOUD, 600)
    await frames(ctrl, QUIET, 200)  # a pause after loud speech: "unfinished"
    await wait_until(lambda: model.calls == 1)
    await wait_until(lambda: any(isinstance(e, TurnJudged) for e in events))
    assert ctrl.detector.end_of_turn_ms > 650
    await frames(ctrl, (LOUD // 4).astype(np.int16), 600)  # goes on, fading
    took = await silence_until_end_of_turn(ctrl)
    assert model.calls == 2 and took < 650


async def test_semantic_vad_in_the_realtime_api() -> None:
    cfg = fake_config(**{"turn": {"impl": "fake", "probability": 0.95}})
    async with running_server(cfg) as server, ws_client(server) as c:
        created = c.of_type("session.created")[0]
        assert created["session"]["audio"]["input"]["turn_detection"] == {
            "type": "semantic_vad", "eagerness": "auto", "create_response": True, "interrupt_response": True}
        await c.send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "semantic_vad", "eagerness": "high"}}}}})
        td = (await c.next("session.updated"))["session"]["audio"]["input"]["turn_detection"]
        assert td["eagerness"] == "high"
        await c.send_audio(utterance(1.0, 1.0))
        metrics = await c.next("step.turn_metrics")
        assert metrics["values"]["end_of_turn_delay_ms"] == EAGERNESS["high"][1]
        assert metrics["values"]["end_of_turn_p"] == 0.95  # the model's answer, for the bench's per-turn records
        await c.send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "semantic_vad", "eagerness": "eager"}}}}})
        assert (await c.next("error"))["error"]["param"]


async def test_semantic_vad_without_a_turn_model_is_a_clear_error() -> None:
    async with running_server() as server, ws_client(server) as c:
        created = c.of_type("session.created")[0]
        assert created["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
        await c.send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "semantic_vad"}}}}})
        err = (await c.next("error"))["error"]
        assert "turn.impl" in err["message"] and err["param"] == "session.turn_detection.type"
        await c.send_audio(utterance())  # the session goes on with server_vad
        await c.next("response.done")
