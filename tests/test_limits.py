"""Limits (server.limits, controller deadlines): per-IP session rate, idle timeout and maximum
duration (a warning, then an ending event and a close), bounded queues and buffers, ASR and TTS
deadlines. No timed asserts: only what happens, and in which order."""
from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

import streaming_tokenizer.fake
from core.stages import BuildEnv, build_all
from realtime import webrtc
from realtime.limits import Lifetime, RateLimiter, client_ip
from realtime.session import RealtimeSession, ServerContext
from realtime.outputs import WebSocketAudioOutput
from tests.realtime_util import (
    WAIT, WsClient, fake_config, running_server, server_context, silence, utterance, wait_until, ws_client,
)
from tests.webrtc_util import Caller, SyntheticMic, mic_audio


# -- per-IP session rate -----------------------------------------------------------------------

def test_rate_limiter_window_and_keys() -> None:
    now = [1000.0]
    limiter = RateLimiter(2, clock=lambda: now[0])
    assert limiter.hit("a") is None and limiter.hit("a") is None
    wait = limiter.hit("a")
    assert wait is not None and 1 <= wait <= 60
    assert limiter.hit("b") is None  # another address is not affected
    now[0] += 61
    assert limiter.hit("a") is None  # the window moved on
    now[0] += 200
    limiter.hit("c")
    assert "b" not in limiter.hits  # stale addresses are swept
    assert RateLimiter(0).hit("a") is None  # 0: off


def test_client_ip_trusts_forwarded_for_only_when_told() -> None:
    class Req:
        remote = "10.0.0.1"
        headers = {"X-Forwarded-For": "6.6.6.6, 203.0.113.7"}
    assert client_ip(Req(), trust_forwarded_for=False) == "10.0.0.1"
    assert client_ip(Req(), trust_forwarded_for=True) == "203.0.113.7"  # the hop our proxy appended


async def test_too_many_new_sessions_from_one_address_get_429() -> None:
    async with running_server(fake_config(**{"server.limits.sessions_per_ip_per_minute": 3})) as server, \
            aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.ws_connect(server.make_url("/v1/realtime")) as ws:
                assert (await ws.receive_json(timeout=WAIT))["type"] == "session.created"
        async with http.get(server.make_url("/v1/realtime")) as r:
            assert r.status == 429
            assert 1 <= int(r.headers["Retry-After"]) <= 60
            assert (await r.json())["error"]["code"] == "rate_limit_exceeded"
        async with http.post(server.make_url("/v1/realtime/calls"), data="v=0") as r:
            assert r.status == 429  # the same budget for WebRTC calls
        async with http.get(server.make_url("/healthz")) as r:
            assert r.status == 200  # probes are never limited


# -- idle timeout and maximum duration ---------------------------------------------------------

async def _ended(c: WsClient) -> tuple[dict, dict, dict]:
    warning = await c.next("step.session_expiring")
    ending = await c.next("step.session_ending")
    error = await c.next("error")
    msg = await asyncio.wait_for(c._reader, WAIT)  # the server closes the socket
    assert msg is None and c.ws.closed
    assert c.index(warning) < c.index(ending) < c.index(error)
    return warning, ending, error


async def test_an_idle_session_is_warned_then_ended() -> None:
    cfg = fake_config(**{"server.limits.idle_timeout_s": 2, "server.limits.expiry_warning_s": 1,
                         "server.limits.max_session_s": 0})
    async with running_server(cfg) as server, ws_client(server) as c:
        await c.send_audio(silence(0.5))  # streamed silence is not activity
        warning, ending, error = await _ended(c)
        assert warning["reason"] == "idle_timeout" and 0 < warning["expires_in_s"] <= 1
        assert ending["reason"] == "idle_timeout"
        assert error["error"]["code"] == "idle_timeout" and "idle for 2 seconds" in error["error"]["message"]
        await wait_until(lambda: not server_context(server).sessions, what="session gone")
        assert server_context(server).admission.admitted == 0


async def test_the_maximum_duration_ends_a_busy_session_too() -> None:
    cfg = fake_config(**{"server.limits.max_session_s": 3, "server.limits.expiry_warning_s": 2,
                         "server.limits.idle_timeout_s": 0})
    async with running_server(cfg) as server, ws_client(server) as c:
        await c.send_audio(utterance())  # a turn, answered: activity does not extend the maximum
        await c.next("response.done")
        warning, ending, error = await _ended(c)
        assert warning["reason"] == "max_duration" and ending["reason"] == "max_duration"
        # As OpenAI's Realtime API says it at its 60-minute cap.
        assert error["error"] == {"type": "invalid_request_error", "code": "session_expired",
                                  "message": "Your session hit the maximum duration of 3 seconds.",
                                  "param": None, "event_id": None}
        await wait_until(lambda: not server_context(server).sessions, what="session gone")


async def test_activity_postpones_the_idle_end() -> None:
    ended: list[str] = []
    clock = [0.0]

    async def end(reason: str, message: str) -> None:
        ended.append(reason)
    life = Lifetime(10, 0, 2, lambda reason, left: None, end, clock=lambda: clock[0])
    try:
        clock[0] = 9
        life.touch()
        assert life.next_end() == (19, "idle_timeout")
        clock[0] = 19.5
        await asyncio.wait_for(life.task, WAIT)
        assert ended == ["idle_timeout"]
    finally:
        life.cancel()


# -- bounded queues and buffers ----------------------------------------------------------------

async def test_a_client_that_reads_no_events_is_ended_at_the_outbound_bound(tmp_path) -> None:
    cfg = fake_config(**{"server.limits.max_outbound_events": 16})
    server = ServerContext(cfg, build_all(cfg, BuildEnv(tmp_path)))
    session = RealtimeSession(server, "websocket", lambda s: WebSocketAudioOutput(s.send))
    closed: list[str] = []

    async def closer(message: str) -> None:
        closed.append(message)
    session.closer = closer
    for _ in range(40):  # nobody reads the outbox
        session.send({"type": "step.test"})
    await wait_until(lambda: session.closed, what="session closed")
    assert session.outbox.qsize() == 17  # the bound, and the one error saying why
    events = [json.loads(session.outbox.get_nowait()) for _ in range(17)]
    assert events[-1]["error"]["code"] == "outbound_queue_full"
    assert closed and "max_outbound_events" in closed[0]
    assert session not in server.sessions


async def test_appended_audio_without_turn_detection_is_bounded() -> None:
    async with running_server(fake_config(**{"server.limits.max_input_buffer_s": 1.0})) as server, \
            ws_client(server) as c:
        await c.send({"type": "session.update", "session": {"type": "realtime",
                                                            "audio": {"input": {"turn_detection": None}}}})
        await c.next("session.updated")
        await c.send_audio(utterance(0.6, 0.0))
        await c.send_audio(utterance(0.6, 0.0))
        err = await c.next("error")
        assert err["error"]["code"] == "input_audio_buffer_full" and "commit or clear" in err["error"]["message"]
        await c.send({"type": "input_audio_buffer.commit"})
        await c.next("input_audio_buffer.committed")
        refused = c.of_type("error")  # each append past the bound: one error
        assert refused and all(e["error"]["code"] == "input_audio_buffer_full" for e in refused)
        await c.send_audio(utterance(0.6, 0.0))  # room again after the commit
        await c.send({"type": "input_audio_buffer.clear"})
        await c.next("input_audio_buffer.cleared")
        assert len(c.of_type("error")) == len(refused)


async def test_conversation_items_are_bounded() -> None:
    async with running_server(fake_config(**{"server.limits.max_conversation_items": 8})) as server, \
            ws_client(server) as c:
        for i in range(8):
            await c.send({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": f"note {i}"}]}})
            await c.next("conversation.item.done")
        await c.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "one too many"}]}})
        err = await c.next("error")
        assert err["error"]["code"] == "conversation_full"
        first = c.of_type("conversation.item.done")[0]["item"]["id"]
        # A spoken turn still happens: the oldest items make room, and the client is told.
        await c.send_audio(utterance())
        await c.next("response.done")
        deleted = await c.next("conversation.item.deleted")
        assert deleted["item_id"] == first
        assert len(server_context(server).sessions.copy().pop().context.turns) == 8


async def test_webrtc_data_channel_backlog_is_bounded() -> None:
    async with running_server(fake_config(**{"server.limits.max_inbound_events": 4})) as server, \
            aiohttp.ClientSession() as http:
        caller = Caller(SyntheticMic(mic_audio()))
        try:
            await caller.connect(http, server.make_url("/v1/realtime/calls"))
            await caller.next("session.created")
            call = next(iter(server.app[webrtc.CALLS_KEY].values()))
            for _ in range(10):  # as a flood arrives between two turns of the event loop
                call._receive(json.dumps({"type": "input_audio_buffer.clear"}))
            err = await caller.next("error")
            assert err["error"]["code"] == "too_many_events"
            await wait_until(lambda: len([e for e in caller.events if e["type"] == "input_audio_buffer.cleared"]) == 4,
                             what="the 4 queued events handled")
        finally:
            await caller.close()


# -- ASR and TTS deadlines ---------------------------------------------------------------------

async def test_asr_past_its_deadline_fails_the_turn_and_the_session_goes_on(monkeypatch) -> None:
    real = streaming_tokenizer.fake.FakeTokenizer.finalize
    stuck = [True]

    async def finalize(self):
        while stuck[0]:
            await asyncio.sleep(0.05)
        return await real(self)
    monkeypatch.setattr(streaming_tokenizer.fake.FakeTokenizer, "finalize", finalize)
    async with running_server(fake_config(**{"controller.asr_timeout_s": 0.5})) as server, ws_client(server) as c:
        await c.send_audio(utterance())
        err = await c.next("error")
        assert err["error"]["code"] == "turn_failed"
        assert err["error"]["message"] == "the turn could not be answered: speech recognition took longer than 0.5 s"
        stuck[0] = False
        await c.send_audio(utterance())
        assert (await c.next("response.done"))["response"]["status"] == "completed"


async def test_tts_past_its_deadline_fails_the_reply_and_the_session_goes_on() -> None:
    async with running_server(fake_config(**{"controller.tts_timeout_s": 0.5})) as server, ws_client(server) as c:
        decoder = server_context(server).stages["decoder"]
        decoder.delay_s = 60.0  # each clause: far past the deadline
        await c.send_audio(utterance())
        err = await c.next("error")
        assert err["error"]["code"] == "reply_failed"
        assert err["error"]["message"] == "the reply failed: speech synthesis took longer than 0.5 s"
        assert (await c.next("response.done"))["response"]["status"] == "failed"
        decoder.delay_s = 0.0
        await c.send_audio(utterance())
        assert (await c.next("response.done"))["response"]["status"] == "completed"


@pytest.mark.parametrize("token_delay_s", [0.8])
async def test_a_slow_llm_does_not_count_against_the_tts_deadline(token_delay_s: float) -> None:
    async with running_server(fake_config(**{"controller.tts_timeout_s": 0.3})) as server, ws_client(server) as c:
        server_context(server).stages["llm"].token_delay_s = token_delay_s  # each token slower than 0.3 s
        await c.send_audio(utterance())
        assert (await c.next("response.done", timeout=60))["response"]["status"] == "completed"
        assert not c.of_type("error")
