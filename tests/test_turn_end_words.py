"""The words' own end-of-turn signal: the chat model's P(end-of-message) after the pause's
transcript (llm/turn_end.py), combined with the audio model (controller/turn_policy.py). Fakes
for the controller; the real llama.cpp server with SmolLM2-135M for the scorer."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
import pytest_asyncio
from aiohttp import web

from controller.config import ControllerConfig
from controller.events import TurnJudged
from controller.turn_policy import EAGERNESS, TEXT_SURE, TEXT_UNFINISHED, model_wait_ms, text_wait_ms
from controller.turns import TurnDetector
from llm.base import Message
from llm.fake import FakeLLM
from llm.turn_end import TurnEndScorer
from tests.aio_util import serve_app
from tests.fakes import LOUD, QUIET, frames, wait_until
from tests.test_end_of_turn import make as make_controller, silence_until_end_of_turn
from vad.fake_turn import FakeTurnModel, Options

CFG = ControllerConfig(pause_ms=70, end_of_turn_ms=650, max_end_of_turn_ms=1500)
SHORT = EAGERNESS["auto"][1]


def test_words_that_end_a_request_overrule_the_audio_models_doubt() -> None:
    doubtful = model_wait_ms(CFG, 0.02)
    assert doubtful > 650
    assert text_wait_ms(CFG, doubtful, 0.02, TEXT_SURE) == SHORT
    assert text_wait_ms(CFG, 650, 0.3, 0.8) == SHORT
    assert text_wait_ms(CFG, doubtful, 0.02, TEXT_SURE - 0.01) == doubtful  # not sure enough: unchanged


def test_words_with_more_to_come_lengthen_a_short_wait() -> None:
    assert text_wait_ms(CFG, SHORT, 0.98, TEXT_UNFINISHED / 2) == 650
    assert text_wait_ms(CFG, 1200, 0.01, TEXT_UNFINISHED / 2) == 1200  # never shortened by doubt


def test_words_agreeing_with_the_audio_model_change_nothing() -> None:
    assert text_wait_ms(CFG, SHORT, 0.9, 0.8) == SHORT
    assert text_wait_ms(CFG, 650, None, 0.8) == 650  # no audio answer yet: the text alone decides nothing


def test_the_words_count_whichever_answer_comes_first() -> None:
    detector = TurnDetector(CFG)
    detector.new_pause()
    assert detector.words_judged(0.8) == 650  # words first: the audio model has not spoken
    assert detector.judged(0.02) == SHORT  # its doubt is overruled by the words already known
    detector.new_pause()
    assert detector.judged(0.02) > 650 and detector.text_probability is None  # a new pause starts afresh


@dataclass
class ScoringLLM(FakeLLM):
    """FakeLLM whose words' P(end) is scripted; every question asked is recorded."""
    p_text: float | None = 0.9
    delay_s: float = 0.0
    asked: list[tuple[list[Message], str]] = field(default_factory=list)
    streams_before_answer: int = -1  # LLM streams started before the words were read

    async def turn_end_probability(self, history, text: str, language: str | None = None) -> float | None:
        self.asked.append((list(history), text))
        self.streams_before_answer = len(self.streams)
        await asyncio.sleep(self.delay_s)
        return self.p_text


def make(llm: ScoringLLM, p_audio: float, cfg: ControllerConfig = CFG):
    return make_controller(FakeTurnModel(Options(probability=p_audio)), cfg, llm=llm)


async def test_a_finished_request_the_audio_model_doubted_ends_after_the_short_wait() -> None:
    llm = ScoringLLM(p_text=0.9)
    ctrl, events = make(llm, p_audio=0.0)  # alone: the 1500 ms cap
    await frames(ctrl, LOUD, 800)
    took = await silence_until_end_of_turn(ctrl)
    assert took < 650, took
    judged = [e for e in events if isinstance(e, TurnJudged) and e.text_probability is not None]
    assert judged and judged[0].wait_ms == SHORT and judged[0].probability == 0.0
    history, text = llm.asked[0]
    assert text and history[0].content == "sys"  # the conversation so far, then the pause's words


async def test_the_speculative_reply_asks_the_llm_only_after_the_words_were_read() -> None:
    """One after the other (the reply then finds the words in the server's prompt cache), not
    side by side on llama.cpp's one thread."""
    llm = ScoringLLM(p_text=0.9, delay_s=0.05)
    ctrl, _ = make(llm, p_audio=0.9)
    await frames(ctrl, LOUD, 800)
    await silence_until_end_of_turn(ctrl)
    await wait_until(lambda: llm.streams)
    assert llm.asked and llm.streams_before_answer == 0


async def test_a_slow_reading_does_not_hold_the_reply() -> None:
    from controller.turn_taking import WORDS_WAIT_S

    llm = ScoringLLM(p_text=0.9, delay_s=30.0)
    ctrl, events = make(llm, p_audio=0.9)
    await frames(ctrl, LOUD, 800)
    await frames(ctrl, QUIET, 100)  # the pause: the speculation transcribes, then asks
    await wait_until(lambda: llm.asked)
    await wait_until(lambda: llm.streams, timeout=WORDS_WAIT_S + 5)  # the reply went on without it
    assert not [e for e in events if isinstance(e, TurnJudged) and e.text_probability is not None]


async def test_without_the_end_of_turn_model_the_words_are_not_scored() -> None:
    llm = ScoringLLM(p_text=0.9)
    ctrl, _ = make(llm, p_audio=0.0, cfg=CFG.model_copy(update={"semantic_turn": False}))
    await frames(ctrl, LOUD, 800)
    took = await silence_until_end_of_turn(ctrl)
    assert 650 - 20 <= took <= 650 + 60 and llm.asked == []


async def test_an_answer_about_an_earlier_pause_is_ignored() -> None:
    llm = ScoringLLM(p_text=0.9, delay_s=0.3)
    ctrl, events = make(llm, p_audio=0.0)
    await frames(ctrl, LOUD, 600)
    await frames(ctrl, QUIET, 100)  # a pause: transcript, then a slow scoring request
    await wait_until(lambda: llm.asked)
    await frames(ctrl, LOUD, 400)  # speech again before the answer
    await asyncio.sleep(0.4)
    assert not [e for e in events if isinstance(e, TurnJudged) and e.text_probability is not None]
    assert ctrl.detector.text_probability is None


@pytest_asyncio.fixture
async def not_llama_cpp():
    """An HTTP server that answers 404 to everything (as vLLM to /apply-template): (its URL, the
    paths asked)."""
    hits: list[str] = []

    async def not_found(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(status=404)

    app = web.Application()
    app.router.add_post("/{tail:.*}", not_found)
    runner, url = await serve_app(app)
    yield url, hits
    await runner.cleanup()


async def test_a_server_without_llama_cpp_endpoints_gives_no_signal_and_is_not_asked_again(not_llama_cpp) -> None:
    url, hits = not_llama_cpp
    scorer = TurnEndScorer()
    try:
        for _ in range(2):
            assert await scorer.probability(url + "/v1", [Message("system", "s")], "Hello?") is None
        assert hits == ["/apply-template"]
    finally:
        await scorer.close()


async def test_the_words_are_read_only_while_no_other_session_is_at_work(not_llama_cpp) -> None:
    """With other callers' model work around, the reply comes after the wait anyway and reading
    first would only add its time: the client does not ask then."""
    from core.scheduler import Kind, Scheduler, Ticket, working_for
    from llm.openai_chat import OpenAIChatClient, Options as LLMOptions

    url, hits = not_llama_cpp
    scheduler = Scheduler()
    client = OpenAIChatClient(LLMOptions(base_url=url + "/v1"), None, scheduler)
    history = [Message("system", "s")]
    try:
        asr = scheduler.lane("asr", 1)
        with working_for(Ticket("me", Kind.SPECULATIVE, 0.0)):
            async with asr.slot(Ticket("other-caller", Kind.FINAL, 0.0)):  # another caller's transcription
                assert await client.turn_end_probability(history, "Hello?") is None
            assert hits == []  # not asked at all
            asr.last_work.clear()  # ... and that caller has been quiet for long
            assert await client.turn_end_probability(history, "Hello?") is None  # asked: a 404 here
            assert hits == ["/apply-template"]
    finally:
        await client.close()


@pytest.mark.integration
async def test_the_real_chat_model_hears_a_finished_request_and_a_sentence_with_more_to_come(tmp_path) -> None:
    from core.stages import BuildEnv, build_stage
    from tests.test_llama_server import _gguf, require_llama_server

    require_llama_server()
    llm = build_stage("llm", "openai", {"base_url": None, "model_path": str(_gguf()),
                                        "log_path": str(tmp_path / "server.log")}, BuildEnv(tmp_path))
    await llm.start()
    try:
        history = [Message("system", "You are a friendly voice assistant.")]
        finished = await llm.turn_end_probability(history, "What time is sunrise in summer?")
        more = await llm.turn_end_probability(history, "I am going to Paris next week.")
        assert finished is not None and more is not None
        assert finished >= TEXT_SURE and more < TEXT_UNFINISHED, (finished, more)
        # Chinese: SmolLM2 does not read it (turn_end_languages [en]) ...
        assert await llm.turn_end_probability(history, "明天会下雨吗?", "zh") is None
        # ... but a server asked anyway answers, also when the likeliest next token is part of a
        # character (no probabilities come with a partial character: llm/turn_end.py)
        llm.options.turn_end_languages = None
        chinese = await llm.turn_end_probability(history, "你好,我想问一下天气,明天会下雨吗?", "zh")
        assert chinese is not None and 0.0 <= chinese <= 1.0
        assert await llm.turn_end_probability(history, "") is None
    finally:
        await llm.close()
