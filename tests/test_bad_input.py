"""Bad input never takes a session (or the server) down.

HTTP mistakes on POST /v1/realtime/calls get a 4xx with a message; client event mistakes get an
`error` event naming the problem and the session still answers the next turn; a client that
vanishes mid-reply is cleaned up (controller closed, tasks gone) and a concurrent session is
unaffected.
"""
from __future__ import annotations

import asyncio
import base64

import aiohttp
import pytest

from tests.realtime_util import (
    WsClient, b64, fake_config, running_server, server_context, tone, utterance, wait_until, ws_client,
)
from tests.webrtc_util import Caller, SyntheticMic, mic_audio

MEDIUM_REPLY = "A reply that takes a while to say. " * 4  # ≈ 3 s of fake audio

AUDIO_ONLY_NO_ICE = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
                     "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:111 opus/48000/2\r\n")


@pytest.mark.parametrize("body, content_type, status, words", [
    ("", "application/sdp", 400, "empty"),
    ("hello, not sdp", "application/sdp", 400, "v=0"),
    ("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", "application/sdp", 400, "no audio"),
    ("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\n", "application/sdp", 400, "Opus"),
    (AUDIO_ONLY_NO_ICE, "application/sdp", 400, "invalid SDP offer"),
    ("v=0\r\n" + "a=x\r\n" * 40_000, "application/sdp", 413, "larger than"),
    ("v=0\r\nm=audio", "text/plain", 415, "Content-Type"),
    ('{"sdp": "v=0"}', "application/json", 415, "application/sdp"),
])
async def test_bad_sdp_offers(body: str, content_type: str, status: int, words: str) -> None:
    async with running_server() as server, aiohttp.ClientSession() as http:
        async with http.post(server.make_url("/v1/realtime/calls"), data=body.encode(),
                             headers={"Content-Type": content_type}) as r:
            assert r.status == status
            assert words in (await r.json())["error"]["message"]
        assert not server_context(server).sessions  # nothing was left behind


async def test_calls_when_full_get_503() -> None:
    async with running_server(fake_config(**{"server.max_sessions": 1})) as server, ws_client(server):
        caller = Caller(SyntheticMic(mic_audio()))
        try:
            async with aiohttp.ClientSession() as http:
                async with http.post(server.make_url("/v1/realtime/calls"), data=await caller.offer(),
                                     headers={"Content-Type": "application/sdp"}) as r:
                    assert r.status == 503 and "sessions" in (await r.json())["error"]["message"]
        finally:
            await caller.close()


BIG = "A" * 2_100_000  # over the default max_event_bytes (2 MB)


@pytest.mark.parametrize("raw, code, param", [
    ('{"type": "nonsense.event"}', "unknown_event", "type"),
    ("{this is not json", "invalid_json", None),
    ('{"type": "input_audio_buffer.append"}', "missing_field", "audio"),
    ('{"type": "conversation.item.truncate", "item_id": "x"}', "missing_field", "content_index"),
    ('{"type": "input_audio_buffer.append", "audio": "' + BIG + '"}', "event_too_large", None),
    ('{"type": "input_audio_buffer.append", "audio": "%%% not base64 %%%"}', "invalid_audio", "audio"),
    ('{"type": "input_audio_buffer.append", "audio": "' + base64.b64encode(b"odd").decode() + '"}',
     "invalid_audio", "audio"),
    ('{"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/g729"}}}}}',
     "unsupported_audio_format", "session.audio.input.format"),
    ('{"type": "session.update", "session": {"audio": {"output": {"format": {"type": "audio/pcm", "rate": 22050}}}}}',
     "unsupported_audio_format", "session.audio.output.format.rate"),
])
async def test_bad_events_get_an_error_and_the_session_goes_on(raw: str, code: str, param: str | None) -> None:
    async with running_server() as server, ws_client(server) as c:
        await c.ws.send_str(raw)
        err = await c.next("error")
        assert err["error"]["code"] == code and err["error"]["param"] == param
        assert err["error"]["type"] == "invalid_request_error" and err["error"]["message"]
        await c.send_audio(utterance())
        done = await c.next("response.done")
        assert done["response"]["status"] == "completed"
        session = next(iter(server_context(server).sessions))
        assert session.settings.input_rate == 24_000 and session.settings.output_rate == 24_000


async def test_binary_frames_are_refused_politely() -> None:
    async with running_server() as server, ws_client(server) as c:
        await c.ws.send_bytes(b"\x00\x01")
        assert "binary" in (await c.next("error"))["error"]["message"]
        await c.send({"type": "input_audio_buffer.append", "audio": b64(tone(0.1))})
        await c.send({"type": "input_audio_buffer.clear"})
        await c.next("input_audio_buffer.cleared")


def _our_tasks(baseline: set) -> set:
    return {t for t in asyncio.all_tasks() - baseline if t is not asyncio.current_task() and not t.done()}


async def test_websocket_client_vanishes_mid_reply() -> None:
    cfg = fake_config(**{"llm.echo": False, "llm.reply": MEDIUM_REPLY})
    async with running_server(cfg) as server, aiohttp.ClientSession() as http:
        ctx = server_context(server)
        baseline = asyncio.all_tasks()
        a = WsClient(await http.ws_connect(server.make_url("/v1/realtime")))
        await a.next("session.created")
        session_a = next(iter(ctx.sessions))
        async with ws_client(server) as b:
            await a.send_audio(utterance())
            await b.send_audio(utterance())
            await a.next("response.output_audio.delta")
            reply_a = session_a.controller._reply
            assert reply_a is not None and not reply_a.task.done()
            await a.close()  # gone while its reply plays
            await wait_until(lambda: session_a not in ctx.sessions, what="session A to be dropped")
            assert session_a.controller._closed and session_a.closed
            await wait_until(lambda: reply_a.task.done(), what="A's reply task to end")
            done = await b.next("response.done")
            assert done["response"]["status"] == "completed"  # B never noticed
        await wait_until(lambda: not ctx.sessions, what="all sessions gone")
        await wait_until(lambda: not _our_tasks(baseline), what=f"no leaked tasks: {_our_tasks(baseline)}")


async def test_webrtc_peer_gone_mid_reply() -> None:
    cfg = fake_config(**{"llm.echo": False, "llm.reply": MEDIUM_REPLY})
    # force_close: no idle keep-alive connection whose server-side handler would outlive the test
    async with running_server(cfg) as server, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        ctx = server_context(server)
        baseline = asyncio.all_tasks()
        async with ws_client(server) as b:
            caller = Caller(SyntheticMic(mic_audio()))
            await caller.connect(http, str(server.make_url("/v1/realtime/calls")))
            await caller.next("response.created")
            session_a = next(s for s in ctx.sessions if s.transport == "webrtc")
            reply_a = session_a.controller._reply
            await b.send_audio(utterance())
            await caller.close()  # the peer hangs up without a word on the data channel
            await wait_until(lambda: session_a not in ctx.sessions, what="the WebRTC session to be dropped")
            await wait_until(lambda: not _calls(server), what="call cleanup")
            assert session_a.controller._closed
            assert reply_a is None or reply_a.task.done()
            assert (await b.next("response.done"))["response"]["status"] == "completed"
        await wait_until(lambda: not ctx.sessions, what="all sessions gone")
        await wait_until(lambda: not _our_tasks(baseline), what="no leaked tasks")


def _calls(server) -> dict:
    from realtime.webrtc import CALLS_KEY

    return server.app[CALLS_KEY]


async def test_errors_echo_the_client_event_id() -> None:
    async with running_server() as server, ws_client(server) as c:
        await c.send({"type": "session.update", "event_id": "ev-42",
                      "session": {"audio": {"input": {"format": {"type": "audio/g729"}}}}})
        err = (await c.next("error"))["error"]
        assert err["event_id"] == "ev-42" and "audio/g729" in err["message"]
        await c.send({"type": "response.cancel", "event_id": "ev-43"})
        assert (await c.next("error"))["error"]["event_id"] == "ev-43"
