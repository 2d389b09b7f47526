"""A failing stage ends the turn it was serving with an `error` event that names the problem in
plain words (no exception text) and a failed response.done; the session goes on and answers the
next turn. (The real embedded LLM server killed mid-reply: tests/test_supervision.py.)"""
from __future__ import annotations

import pytest

import decoder.fake
import streaming_tokenizer.fake
from controller.failures import describe_failure
from llm.openai_chat import LLMError, LLMUnavailableError
from tests.realtime_util import running_server, utterance, ws_client

SECRET = "internal detail /opt/secret.py at 0xdeadbeef"


class Flaky:
    """Raises (with a message a client must never see) until mended, then calls through."""

    def __init__(self, real) -> None:
        self.real, self.failures, self.broken = real, 0, True

    def __call__(self, *args, **kwargs):
        if self.broken:
            self.failures += 1
            raise RuntimeError(SECRET)
        return self.real(*args, **kwargs)


def _clean(message: str) -> None:
    assert SECRET not in message and "RuntimeError" not in message and "Traceback" not in message


async def test_decoder_raising_fails_the_reply_and_the_session_goes_on(monkeypatch) -> None:
    flaky = Flaky(decoder.fake.FakeDecoder._sound)
    monkeypatch.setattr(decoder.fake.FakeDecoder, "_sound", lambda self, clause: flaky(self, clause))
    async with running_server() as server, ws_client(server) as c:
        await c.send_audio(utterance())
        err = await c.next("error")
        assert err["error"]["code"] == "reply_failed"
        assert err["error"]["message"] == "the reply failed: speech synthesis failed"
        _clean(err["error"]["message"])
        assert (await c.next("response.done"))["response"]["status"] == "failed"
        flaky.broken = False
        await c.send_audio(utterance())
        assert (await c.next("response.done"))["response"]["status"] == "completed"


async def test_asr_raising_fails_the_turn_and_the_session_goes_on(monkeypatch) -> None:
    flaky = Flaky(streaming_tokenizer.fake.UserInput)
    monkeypatch.setattr(streaming_tokenizer.fake, "UserInput", flaky)
    # (A failed speculation is only discarded: the end of turn transcribes again, and fails too.)
    async with running_server() as server, ws_client(server) as c:
        await c.send_audio(utterance())
        err = await c.next("error")
        assert err["error"]["code"] == "turn_failed"
        assert "speech recognition failed" in err["error"]["message"]
        _clean(err["error"]["message"])
        flaky.broken = False
        await c.send_audio(utterance())
        assert (await c.next("response.done"))["response"]["status"] == "completed"


async def test_llm_raising_fails_the_reply_and_the_session_goes_on(monkeypatch) -> None:
    import llm.fake

    real = llm.fake.FakeLLM.stream
    down = [True]

    async def stream(self, messages):
        if down[0]:
            raise LLMUnavailableError(f"http://127.0.0.1:1234/v1 is unreachable: {SECRET}")
        async for text in real(self, messages):
            yield text

    monkeypatch.setattr(llm.fake.FakeLLM, "stream", stream)
    async with running_server() as server, ws_client(server) as c:
        await c.send_audio(utterance())
        err = await c.next("error")
        assert err["error"]["message"] == ("the reply failed: the language model is not reachable right now; "
                                           "try again in a moment")
        _clean(err["error"]["message"])
        assert "127.0.0.1" not in err["error"]["message"]
        assert (await c.next("response.done"))["response"]["status"] == "failed"
        down[0] = False
        await c.send_audio(utterance())
        assert (await c.next("response.done"))["response"]["status"] == "completed"


@pytest.mark.parametrize("exc, words", [
    (LLMError("x answered 500: " + SECRET), "the language model failed"),
    (TimeoutError(SECRET), "took too long"),
    (MemoryError(), "ran out of memory"),
    (ValueError(SECRET), "an internal error"),
])
def test_failures_are_described_without_their_text(exc: BaseException, words: str) -> None:
    message = describe_failure("the reply failed", exc)
    assert words in message and SECRET not in message
