"""A failing stage ends the turn it was serving with an `error` event that names the problem in
plain words (no exception text) and a failed response.done; the session goes on and answers the
next turn. (The real embedded LLM server killed mid-reply: tests/test_supervision.py.) WebRTC peers
that vanish, or never connect or open their data channel, are cleaned up within a stated time."""
from __future__ import annotations

import asyncio
import signal
import sys

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

import decoder.fake
from bench.impair import Impairment
import streaming_tokenizer.fake
from controller.failures import describe_failure
from llm.openai_chat import LLMError, LLMUnavailableError
from realtime import webrtc
from realtime.webrtc import CALLS_KEY, receive_buffer, use_loopback_candidates
from tests.realtime_util import REPO, WAIT, fake_config, running_server, server_context, utterance, wait_until, ws_client
from tests.webrtc_util import Caller, SyntheticMic, mic_audio

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


async def test_decoder_raising_mid_reply_fails_it_and_the_next_turn_works(monkeypatch) -> None:
    """The decoder fails on the reply's second clause, after the first one was sent."""
    flaky = Flaky(decoder.fake.FakeDecoder._sound)
    calls = [0]

    def sound(self, clause):
        calls[0] += 1
        return flaky.real(self, clause) if calls[0] == 1 else flaky(self, clause)
    monkeypatch.setattr(decoder.fake.FakeDecoder, "_sound", sound)
    cfg = fake_config(**{"llm.echo": False, "llm.reply": "First part, then more. And a second sentence here."})
    async with running_server(cfg) as server, ws_client(server) as c:
        await c.send_audio(utterance())
        err = await c.next("error")
        assert err["error"]["code"] == "reply_failed" and flaky.failures == 1
        first_audio = c.of_type("response.output_audio.delta")
        assert first_audio and c.index(first_audio[0]) < c.index(err)  # it failed mid-reply
        _clean(err["error"]["message"])
        assert (await c.next("response.done"))["response"]["status"] == "failed"
        flaky.broken = False
        await c.send_audio(utterance())
        assert (await c.next("response.done"))["response"]["status"] == "completed"


# -- WebRTC peers that go away without a word --------------------------------------------------

# aioice's consent freshness (RFC 7675): a check every 4-6 s, and the ICE connection is closed
# after 6 unanswered ones, i.e. 25-40 s after the peer went silent (docs/operations.md).
VANISHED_CLEANUP_BOUND_S = 120  # generous: the stated time is ≤ 40 s


async def test_a_webrtc_caller_that_vanishes_is_cleaned_up() -> None:
    async with running_server() as server:
        ctx = server_context(server)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.vanishing_caller", str(server.make_url("/v1/realtime/calls")),
            cwd=REPO, stdout=asyncio.subprocess.PIPE)
        try:
            line = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode()
            assert line.startswith("connected"), line
            assert len(ctx.sessions) == 1
            proc.send_signal(signal.SIGSTOP)  # gone: no DTLS close, no hangup, its sockets mute
            await wait_until(lambda: not ctx.sessions, VANISHED_CLEANUP_BOUND_S, "the vanished call cleaned up")
            assert not server.app[webrtc.CALLS_KEY] and ctx.admission.admitted == 0
        finally:
            proc.kill()
            await proc.wait()


async def test_a_webrtc_caller_that_never_opens_the_data_channel_is_closed() -> None:
    cfg = fake_config(**{"server.limits.webrtc_connect_timeout_s": 2})
    async with running_server(cfg) as server, aiohttp.ClientSession() as http:
        ctx = server_context(server)
        use_loopback_candidates()
        pc = RTCPeerConnection()  # audio only: no oai-events channel
        pc.addTrack(SyntheticMic(mic_audio()))
        try:
            await pc.setLocalDescription(await pc.createOffer())
            async with http.post(server.make_url("/v1/realtime/calls"), data=pc.localDescription.sdp,
                                 headers={"Content-Type": "application/sdp"}) as r:
                assert r.status == 201
                await pc.setRemoteDescription(RTCSessionDescription(sdp=await r.text(), type="answer"))
            assert len(ctx.sessions) == 1
            await wait_until(lambda: not ctx.sessions, WAIT, "the call without a data channel closed")
            assert not server.app[webrtc.CALLS_KEY] and ctx.admission.admitted == 0
        finally:
            await pc.close()


async def test_an_offer_whose_peer_never_connects_is_closed() -> None:
    cfg = fake_config(**{"server.limits.webrtc_connect_timeout_s": 2})
    async with running_server(cfg) as server, aiohttp.ClientSession() as http:
        ctx = server_context(server)
        caller = Caller(SyntheticMic(mic_audio()))
        try:
            async with http.post(server.make_url("/v1/realtime/calls"), data=await caller.offer(),
                                 headers={"Content-Type": "application/sdp"}) as r:
                assert r.status == 201  # the answer is never applied: no ICE, no DTLS
            assert len(ctx.sessions) == 1
            await wait_until(lambda: not ctx.sessions, WAIT, "the never-connected call closed")
            assert ctx.admission.admitted == 0
        finally:
            await caller.close()


async def test_webrtc_call_through_5_percent_loss_and_50_ms_jitter() -> None:
    """netem is not in this kernel (docs/operations.md): the loss and jitter are applied to the
    caller's sockets in user space (bench/impair.py), both directions, DTLS and STUN included.
    Every turn is still answered with audio the caller hears, and the session is not lost."""
    impairment = Impairment(loss=0.05, jitter_ms=50, seed=12)
    async with running_server() as server, aiohttp.ClientSession() as http:
        caller = Caller(SyntheticMic(mic_audio()))
        try:
            offer = await caller.offer()
            assert impairment.apply(caller.pc) >= 1
            async with http.post(server.make_url("/v1/realtime/calls"), data=offer,
                                 headers={"Content-Type": "application/sdp"}) as r:
                assert r.status == 201
                await caller.answer(await r.text())
            heard, start = 0, 0
            for turn in range(3):
                if turn:
                    start = len(caller.events)
                    caller.mic.say(mic_audio())
                done = await caller.next("response.done", after=start, timeout=90)
                assert done["response"]["status"] == "completed"
                await wait_until(lambda: caller.loud_frames > heard, WAIT, "reply audio heard")
                heard = caller.loud_frames
            assert impairment.dropped > 0 and impairment.sent > 100  # the impairment was real
            assert len(server_context(server).sessions) == 1  # the session held
            (call,) = server.app[CALLS_KEY].values()
            (receiver,) = call.pc.getReceivers()
            buffer = receive_buffer(receiver)  # lost and reordered packets skipped, none waited for
            assert buffer.lost > 0 and buffer.late > 0 and buffer.released > 100
        finally:
            await caller.close()


def test_an_impairment_can_be_one_way() -> None:
    assert Impairment.parse("loss=0.01,jitter_ms=0,direction=up").direction == "up"
    assert Impairment.parse("loss=0.01").direction == "both"
    with pytest.raises(ValueError, match="direction must be both, up or down"):
        Impairment.parse("direction=sideways")
