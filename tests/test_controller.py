"""The controller on scripted timelines with fake stages: transitions, speculation, barge-in."""
from __future__ import annotations

import asyncio

import pytest

from context.history import Context
from controller.config import ControllerConfig
from controller.controller import Controller, Stages
from controller.events import ResponseDone, Speculation, StateChanged, TurnMetrics
from core.scheduler import Kind
from decoder.fake import FakeDecoder
from llm.base import Message
from llm.fake import FakeLLM
from streaming_tokenizer.base import UserInput
from streaming_tokenizer.fake import FakeTokenizer
from tests.fakes import LOUD, QUIET, FakeOutput, frames, wait_until
from vad.energy import EnergyVad


def make(cfg: ControllerConfig | None = None, llm: FakeLLM | None = None, auto_play: bool = True,
         tokenizer=None):
    events: list = []
    out = FakeOutput(auto_play=auto_play)
    llm = llm or FakeLLM(reply="Hello there, this is a reply. It has two sentences.", token_delay_s=0.001)
    stages = Stages(EnergyVad(), tokenizer or FakeTokenizer(), llm, FakeDecoder())
    ctx = Context(system_prompt="sys")
    ctrl = Controller(stages, ctx, out, events.append, cfg or ControllerConfig(), session_id="s-1")
    return ctrl, out, llm, ctx, events


def states(events) -> list[str]:
    return [e.state for e in events if isinstance(e, StateChanged)]


def spec_actions(events) -> list[str]:
    return [e.action for e in events if isinstance(e, Speculation)]


async def test_turn_goes_through_every_state_and_commits_the_speculation():
    ctrl, out, llm, ctx, events = make()
    await frames(ctrl, LOUD, 600)
    await frames(ctrl, QUIET, 220)
    assert ctrl.state.value == "user_paused"
    await wait_until(lambda: llm.streams)  # the speculation reached the LLM during the pause
    assert not out.chunks  # ...but nothing is played while it is only a speculation
    await frames(ctrl, QUIET, 600)
    await wait_until(lambda: ctrl.state.value == "silence")
    assert states(events) == ["user_speaking", "user_paused", "bot_replying", "silence"]
    assert spec_actions(events) == ["started", "committed"]
    assert len(llm.streams) == 1 and llm.streams[0].finished
    assert out.chunks and "Hello there," in out.chunks[0].text
    assert [t.role for t in ctx.turns] == ["user", "assistant"]
    assert ctx.turns[0].text.startswith("w0 w1")
    assert ctx.turns[1].text == "Hello there, this is a reply. It has two sentences."
    metrics = [e for e in events if isinstance(e, TurnMetrics)]
    assert metrics and metrics[0].speculative and metrics[0].values["saved_ms"] is not None
    assert ctrl.stats.as_dict()["commit_rate"] == 1.0


async def test_model_work_carries_its_tickets_kind():
    """Warm-up at onset (dropped once the speculation supersedes it), the speculation's work
    SPECULATIVE and dropped when the user goes on, the committed one lifted to FINAL."""
    ctrl, out, llm, ctx, events = make()
    await frames(ctrl, LOUD, 600)
    await wait_until(lambda: llm.warm_tickets)
    warm = llm.warm_tickets[0]
    assert warm.kind is Kind.WARMUP and not warm.dropped
    await frames(ctrl, QUIET, 220)
    await wait_until(lambda: llm.streams)
    first = llm.streams[0].ticket
    assert first.kind is Kind.SPECULATIVE and warm.dropped
    await frames(ctrl, LOUD, 300)  # the user goes on: the speculation is discarded
    assert first.dropped
    await frames(ctrl, QUIET, 220)
    await wait_until(lambda: len(llm.streams) == 2)
    second = llm.streams[1].ticket
    assert second.kind is Kind.SPECULATIVE and second.session == "s-1"
    await frames(ctrl, QUIET, 600)
    await wait_until(lambda: ctrl.state.value == "silence")
    assert second.kind is Kind.FINAL and not second.dropped  # committed: it was played
    assert spec_actions(events) == ["started", "discarded", "started", "committed"]


async def test_each_user_turn_warms_the_llm_with_the_conversation_so_far():
    ctrl, out, llm, ctx, events = make()
    await frames(ctrl, LOUD, 600)
    await wait_until(lambda: llm.warmed)
    assert llm.warmed == [[Message("system", "sys")]]  # at onset, before any transcript exists
    assert not llm.streams
    await frames(ctrl, QUIET, 900)
    await wait_until(lambda: ctrl.state.value == "silence")
    await frames(ctrl, LOUD, 600)  # the second turn's prefix holds the whole first exchange
    await wait_until(lambda: len(llm.warmed) == 2)
    assert llm.warmed[1] == ctx.messages()[:3] and [m.role for m in llm.warmed[1]] == ["system", "user", "assistant"]
    await frames(ctrl, QUIET, 900)
    await wait_until(lambda: ctrl.state.value == "silence")
    # Every prompt of the turn starts with what was warmed.
    assert llm.streams[-1].messages[:3] == llm.warmed[1]
    await ctrl.close()


async def test_resumed_speech_discards_the_speculation_and_closes_the_llm_stream():
    slow = FakeLLM(reply=" ".join(["word"] * 200), token_delay_s=0.01)
    ctrl, out, llm, ctx, events = make(llm=slow)
    await frames(ctrl, LOUD, 400)
    await frames(ctrl, QUIET, 260)
    await wait_until(lambda: llm.streams and llm.streams[0].pieces_sent > 0)
    await frames(ctrl, LOUD, 400)  # the user goes on
    assert ctrl.state.value == "user_speaking"
    await wait_until(lambda: llm.streams[0].closed_early)  # server-side work stopped
    assert not llm.streams[0].finished
    assert not out.chunks
    await frames(ctrl, QUIET, 700)
    assert ctrl.state.value == "bot_replying"
    await wait_until(lambda: out.chunks)
    assert spec_actions(events) == ["started", "discarded", "started", "committed"]
    assert ctrl.stats.committed == 1 and ctrl.stats.discarded == 1
    # The committed reply saw the whole utterance (both phrases), not the first one.
    user_turn = llm.streams[1].messages[-1].content
    assert user_turn == ctx.turns[0].text and len(user_turn.split()) >= 3
    await ctrl.close()


async def test_speculation_off_starts_the_reply_only_at_the_end_of_turn():
    ctrl, out, llm, ctx, events = make(ControllerConfig(speculation=False))
    await frames(ctrl, LOUD, 500)
    await frames(ctrl, QUIET, 300)
    await asyncio.sleep(0.05)
    assert not llm.streams
    await frames(ctrl, QUIET, 400)
    await wait_until(lambda: ctrl.state.value == "silence")
    assert spec_actions(events) == []
    assert len(llm.streams) == 1 and out.chunks
    metrics = [e for e in events if isinstance(e, TurnMetrics)][0]
    assert not metrics.speculative and "saved_ms" not in metrics.values


async def test_speculation_is_not_committed_when_the_final_input_differs():
    class ChangingTokenizer(FakeTokenizer):
        async def finalize(self) -> UserInput:
            self.finalize_calls += 1
            return UserInput(text=f"version {self.finalize_calls}", speech_seconds=1.0)

    ctrl, out, llm, ctx, events = make(tokenizer=ChangingTokenizer())
    await frames(ctrl, LOUD, 400)
    await frames(ctrl, QUIET, 700)
    await wait_until(lambda: ctrl.state.value == "silence")
    assert spec_actions(events) == ["started", "discarded"]
    assert len(llm.streams) == 2
    assert llm.streams[1].messages[-1].content == "version 2"
    assert ctx.turns[0].text == "version 2"


async def test_barge_in_stops_playback_cancels_generation_and_keeps_what_was_heard():
    slow = FakeLLM(reply="One two three four. " + " ".join(["more"] * 300), token_delay_s=0.005)
    ctrl, out, llm, ctx, events = make(llm=slow, auto_play=False)
    await frames(ctrl, LOUD, 400)
    await frames(ctrl, QUIET, 700)
    await wait_until(lambda: out.chunks)
    await wait_until(lambda: any(c.text for c in out.chunks[1:]))
    first = out.chunks[0]
    span = next(i for i, c in enumerate(out.chunks[1:], 1) if c.text)
    out.played = sum(c.seconds for c in out.chunks[:span])  # heard exactly the first clause
    cleared_before = out.cleared
    await frames(ctrl, LOUD, 260)  # longer than barge_in_ms
    assert ctrl.state.value == "user_speaking"
    assert out.cleared > cleared_before  # queued audio dropped, not drained: the caller hears it stop
    # Whether it ends depends on the words: until the interrupting turn ends, it is only held.
    assert not [e for e in events if isinstance(e, ResponseDone)]
    await frames(ctrl, LOUD, 600)
    await frames(ctrl, QUIET, 700)  # words ("w0 w1 w2 w3"), 0.86 s of them: a real interruption
    await wait_until(lambda: [e for e in events if isinstance(e, ResponseDone)])
    done = [e for e in events if isinstance(e, ResponseDone)]
    assert done[0].status == "cancelled" and done[0].reason == "barge_in"
    assert done[0].text == first.text == "One two three four."
    await wait_until(lambda: llm.streams[0].closed_early)
    assert ctx.turns[1].role == "assistant" and ctx.turns[1].text == "One two three four."
    # The interrupting speech is the next user turn: it is answered in turn.
    await wait_until(lambda: len(llm.streams) == 2)
    assert llm.streams[1].messages[-2].content == "One two three four."
    assert llm.streams[1].messages[-1].role == "user" and llm.streams[1].messages[-1].content.startswith("w0")
    await ctrl.close()


async def test_backchannel_does_not_interrupt():
    ctrl, out, llm, ctx, events = make(auto_play=False)
    await frames(ctrl, LOUD, 400)
    await frames(ctrl, QUIET, 700)
    await wait_until(lambda: out.chunks)
    out.played = 0.1  # the caller hears the reply...
    await frames(ctrl, LOUD, 120)  # ..."mm-hm"
    await frames(ctrl, QUIET, 200)
    assert ctrl.state.value == "bot_replying"
    assert not [e for e in events if isinstance(e, ResponseDone)]
    await wait_until(lambda: llm.streams[0].finished)
    out.finish_playing()
    await wait_until(lambda: ctrl.state.value == "silence")
    assert [e.status for e in events if isinstance(e, ResponseDone)] == ["completed"]


async def test_client_truncate_cuts_the_history_to_the_heard_audio():
    ctrl, out, llm, ctx, events = make()
    await frames(ctrl, LOUD, 400)
    await frames(ctrl, QUIET, 700)
    await wait_until(lambda: ctrl.state.value == "silence")
    item = ctx.turns[-1].item_id
    spoken_s = ctx.turns[-1].speech_seconds
    assert ctrl.truncate(item, int(spoken_s * 1000 / 2))
    assert 0 < len(ctx.turns[-1].text.split()) < len("Hello there, this is a reply. It has two sentences.".split())
    assert not ctrl.truncate("item_unknown", 100)


async def test_short_noise_is_not_a_turn():
    ctrl, out, llm, ctx, events = make()
    await frames(ctrl, LOUD, 40)
    await frames(ctrl, QUIET, 800)
    assert states(events) == [] and not llm.streams


async def test_manual_commit_and_response_create_without_server_vad():
    ctrl, out, llm, ctx, events = make()
    ctrl.turn_detection = False
    await frames(ctrl, LOUD, 400)
    assert states(events) == []
    user = await ctrl.commit_input()
    assert user is not None and user.text
    ctrl.create_response()
    await wait_until(lambda: ctrl.state.value == "silence")
    assert llm.streams[0].messages[-1].content == user.text
    assert [t.role for t in ctx.turns] == ["user", "assistant"]


async def test_failing_llm_ends_the_turn_with_an_error_not_a_dead_session():
    class BrokenLLM(FakeLLM):
        async def stream(self, messages):
            raise ConnectionError("llm down")
            yield ""  # pragma: no cover

    ctrl, out, llm, ctx, events = make(llm=BrokenLLM())
    await frames(ctrl, LOUD, 400)
    await frames(ctrl, QUIET, 700)
    await wait_until(lambda: ctrl.state.value == "silence")
    assert any(getattr(e, "code", "") == "reply_failed" for e in events)
    # the session still works for the next turn
    ctrl.stages.llm = FakeLLM(reply="Back again.", token_delay_s=0.001)
    await frames(ctrl, LOUD, 400)
    await frames(ctrl, QUIET, 700)
    await wait_until(lambda: ctrl.state.value == "silence" and ctx.turns[-1].text == "Back again.")


@pytest.mark.parametrize("bad", [0, 319, 321])
async def test_wrong_frame_size_is_rejected(bad):
    ctrl, *_ = make()
    import numpy as np
    with pytest.raises(ValueError):
        ctrl.push_audio(np.zeros(bad, dtype=np.int16))


async def test_manual_commits_start_each_turn_afresh():
    ctrl, out, llm, ctx, events = make()
    ctrl.turn_detection = False
    await frames(ctrl, LOUD, 400)
    first = await ctrl.commit_input()
    await frames(ctrl, LOUD, 200)
    second = await ctrl.commit_input()
    assert len(second.text.split()) < len(first.text.split())  # not the first turn again
    assert ctx.turns[0].item_id != ctx.turns[1].item_id
    assert await ctrl.commit_input() is None  # nothing new: nothing to commit


async def test_without_auto_response_the_turn_is_committed_but_not_answered():
    ctrl, out, llm, ctx, events = make()
    ctrl.auto_respond = False
    await frames(ctrl, LOUD, 400)
    await frames(ctrl, QUIET, 700)
    await wait_until(lambda: ctx.turns)
    assert ctrl.state.value == "silence" and [t.role for t in ctx.turns] == ["user"]
    await asyncio.sleep(0.05)
    assert all(not s.finished for s in llm.streams)  # the speculation was dropped, nothing played
    assert not out.chunks
    ctrl.create_response()
    await wait_until(lambda: ctrl.state.value == "silence" and len(ctx.turns) == 2)


async def test_not_interruptible_reply_plays_through_speech():
    ctrl, out, llm, ctx, events = make(auto_play=False)
    ctrl.interruptible = False
    await frames(ctrl, LOUD, 400)
    await frames(ctrl, QUIET, 700)
    await wait_until(lambda: out.chunks)
    await frames(ctrl, LOUD, 600)
    assert ctrl.state.value == "bot_replying"
    await wait_until(lambda: llm.streams[-1].finished)
    out.finish_playing()
    await wait_until(lambda: ctrl.state.value == "silence")


async def test_barge_in_speech_reaches_the_tokenizer_from_its_start():
    tok = FakeTokenizer()
    ctrl, out, llm, ctx, events = make(auto_play=False, tokenizer=tok)
    await frames(ctrl, LOUD, 400)
    await frames(ctrl, QUIET, 700)
    await wait_until(lambda: out.chunks)
    out.played = 0.1  # heard: speech now is a barge-in, not a taken-back turn
    for ms in (100, 100, 100):  # words with short gaps: detected only after 250 ms of speech
        await frames(ctrl, LOUD, ms)
        if ctrl.state.value == "bot_replying":
            await frames(ctrl, QUIET, 100)
    assert ctrl.state.value == "user_speaking"
    assert tok.voiced_frames == 15  # all of the interrupting speech, not just what came after
    await ctrl.close()


class AudioTokenTokenizer(FakeTokenizer):
    """Step-Audio-like: the input is audio tokens, with a transcript for the history."""

    async def finalize(self) -> UserInput:
        user = await super().finalize()
        return UserInput(user.text, audio_tokens=tuple(range(self.voiced_frames)), speech_seconds=user.speech_seconds)


@pytest.mark.parametrize("how", ["server_vad_without_speculation", "commit_then_response_create"])
async def test_a_fresh_reply_hears_the_turn_as_audio_tokens_and_the_past_as_text(how):
    """Only a committed speculation used to send the audio tokens; a reply started at the end of
    the turn (or after a client commit) sent the transcript instead."""
    ctrl, out, llm, ctx, events = make(ControllerConfig(speculation=False), tokenizer=AudioTokenTokenizer())
    for turn in range(2):
        if how == "server_vad_without_speculation":
            await frames(ctrl, LOUD, 400)
            await frames(ctrl, QUIET, 700)
        else:
            ctrl.turn_detection = False
            await frames(ctrl, LOUD, 400)
            await ctrl.commit_input()
            ctrl.create_response()
        await wait_until(lambda: ctrl.state.value == "silence" and len(llm.streams) == turn + 1)
    first, second = llm.streams[0].messages, llm.streams[1].messages
    assert first[-1].content.startswith("<audio_0><audio_1>") and first[-1].role == "user"
    assert [m.role for m in second] == ["system", "user", "assistant", "user"]
    assert second[1].content == ctx.turns[0].text and not second[1].content.startswith("<audio_")  # past: text
    assert second[-1].content.startswith("<audio_0>")  # the current turn: tokens, not also its transcript
    assert [t.role for t in ctx.turns] == ["user", "assistant", "user", "assistant"]


def test_a_language_for_a_tokenizer_that_takes_none_is_refused():
    """Step-Audio's audio tokens carry no language: asking for one is an error, not ignored."""
    from types import SimpleNamespace

    from controller.controller import Controller

    without = SimpleNamespace(stages=SimpleNamespace(tokenizer=object()))
    with pytest.raises(ValueError, match="takes no language"):
        Controller.set_input_language(without, "zh")
    Controller.set_input_language(without, None)  # nothing asked, nothing refused
