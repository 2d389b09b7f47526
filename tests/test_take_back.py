"""A premature end of turn is taken back: when the user goes on before any of the reply was heard,
the reply is withdrawn (its LLM stream closed) and the turn continues as one utterance. Once the
caller has heard the reply, speech over it is a barge-in as before. Fake stages, audio time."""
from __future__ import annotations

from context.history import Context
from controller.config import ControllerConfig
from controller.controller import Controller, Stages
from controller.events import ResponseDone, StateChanged, TurnTakenBack
from decoder.fake import FakeDecoder
from llm.fake import FakeLLM
from realtime.events_out import EventRenderer
from realtime.protocol import SessionSettings
from streaming_tokenizer.fake import FakeTokenizer
from tests.fakes import LOUD, QUIET, FakeOutput, frames, wait_until
from vad.energy import EnergyVad
from vad.fake_turn import FakeTurnModel, Options

# An eager policy: a pause the model calls finished ends the turn after 250 ms of silence.
CFG = ControllerConfig(pause_ms=70, end_of_turn_ms=650, eagerness="high")


def make(take_back: bool = True):
    events: list = []
    out = FakeOutput(auto_play=False)  # playback advances only when the test says so
    tok = FakeTokenizer()
    llm = FakeLLM(reply="Sure, here you go.", token_delay_s=0.001)
    stages = Stages(EnergyVad(), tok, llm, FakeDecoder(), turn=FakeTurnModel(Options(probability=0.95)))
    cfg = CFG.model_copy(update={"take_back_turns": take_back})
    ctrl = Controller(stages, Context("sys"), out, events.append, cfg, session_id="s")
    return ctrl, out, tok, llm, events


async def test_speech_before_the_reply_is_heard_takes_the_turn_back() -> None:
    ctrl, out, tok, llm, events = make()
    await frames(ctrl, LOUD, 400)  # "I need a new laptop for work."
    await frames(ctrl, QUIET, 400)  # a pause the model calls finished: the turn ends at 250 ms
    assert ctrl.state.value == "bot_replying"
    first_item = ctrl._item_id
    await wait_until(lambda: ctrl.context.turns and out.chunks)  # committed, reply audio queued...
    await frames(ctrl, LOUD, 400)  # ...but not heard yet: "Something light."
    assert ctrl.state.value == "user_speaking"
    (back,) = [e for e in events if isinstance(e, TurnTakenBack)]
    assert back.item_id == first_item and back.committed and back.new_item_id == ctrl._item_id
    assert back.response_id == [e for e in events if isinstance(e, ResponseDone)][0].response_id
    assert not ctrl.context.turns  # the withdrawn input left the history
    assert [e.reason for e in events if isinstance(e, ResponseDone)] == ["turn_resumed"]
    await wait_until(lambda: llm.streams[0].closed_early or llm.streams[0].finished)
    await frames(ctrl, QUIET, 400)
    await wait_until(lambda: ctrl.context.turns and len(llm.streams) >= 2 and llm.streams[-1].finished)
    out.finish_playing()
    await wait_until(lambda: len(ctrl.context.turns) == 2)
    user, assistant = ctrl.context.turns
    assert user.text == "w0 w1 w2 w3" and user.item_id == back.new_item_id  # both phrases, one turn
    assert assistant.role == "assistant"


async def test_once_the_reply_is_heard_speech_is_a_barge_in() -> None:
    ctrl, out, tok, llm, events = make()
    await frames(ctrl, LOUD, 400)
    await frames(ctrl, QUIET, 400)
    await wait_until(lambda: out.chunks)
    out.played = 0.05  # the first 50 ms reached the caller
    await frames(ctrl, LOUD, 400)
    assert not [e for e in events if isinstance(e, TurnTakenBack)]
    assert "barge_in" in [e.reason for e in events if isinstance(e, StateChanged)]


async def test_without_the_option_the_early_reply_is_barged_into() -> None:
    ctrl, out, tok, llm, events = make(take_back=False)
    await frames(ctrl, LOUD, 400)
    await frames(ctrl, QUIET, 400)
    await wait_until(lambda: out.chunks)
    await frames(ctrl, LOUD, 400)
    assert not [e for e in events if isinstance(e, TurnTakenBack)]
    assert "barge_in" in [e.reason for e in events if isinstance(e, StateChanged)]


def test_the_realtime_client_sees_the_item_deleted_and_the_turn_go_on() -> None:
    renderer = EventRenderer(SessionSettings(instructions=""))
    out = renderer.render(TurnTakenBack("item_a", True, "item_b", 1200))
    assert out[0] == {"type": "conversation.item.deleted", "item_id": "item_a"}
    assert out[1]["type"] == "step.turn_taken_back" and out[1]["new_item_id"] == "item_b"
    done = renderer.render(ResponseDone("resp_1", "item_x", "cancelled", "", "turn_resumed"))
    assert done[-1]["response"]["status_details"]["reason"] == "turn_detected"  # the API's own reason
    assert [o["type"] for o in renderer.render(TurnTakenBack("item_c", False, "item_d", 1))] == [
        "step.turn_taken_back"]
