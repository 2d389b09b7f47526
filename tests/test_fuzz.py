"""Fuzzing (hypothesis): generated Realtime client events, SDP offers and Twilio Media Streams
messages. Nothing crashes, every input known to be bad is answered (an `error` event, a 4xx, or
a CallError that closes the stream with a reason), no `internal_error` ever, and afterwards no
session or task is left behind.

Bounded for the test suite (about 10,000 events, 2,000 offers, 2,000 telephony messages);
`make fuzz` runs the same tests with FUZZ_SCALE=10 for ten times as many.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os

import aiohttp
from aiohttp import WSMsgType
from aiohttp.http_websocket import WSMessage
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.stages import BuildEnv, build_all
from realtime.outputs import WebSocketAudioOutput
from realtime.session import RealtimeSession, ServerContext
from realtime.telephony import TwilioCall
from realtime.telephony.calls import CallError
from tests.realtime_util import fake_config, running_server, server_context, wait_until

# A coroutine never awaited (reported when it is collected): a bug, even when nothing crashed.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
SCALE = int(os.environ.get("FUZZ_SCALE", "1"))
BATCH = 50  # inputs per hypothesis example: the per-example overhead is paid once per batch


def _settings(total: int, batch: int = BATCH):
    return settings(max_examples=max(1, total * SCALE // batch), deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


# -- values ------------------------------------------------------------------------------------

# Cheap to draw (hypothesis's string drawing is its slowest part): mostly picked, sometimes made.
TEXT = st.sampled_from(["", "x", "item_1", "resp_1", "ü€", "\x00", "a" * 70, "null", "{", "input_text"]) | \
    st.text(max_size=8)
LEAF = st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | TEXT
JSON = st.recursive(LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                    max_leaves=4)
B64 = st.binary(max_size=960).map(lambda b: base64.b64encode(b).decode()) | TEXT
KNOWN_TYPES = ["session.update", "input_audio_buffer.append", "input_audio_buffer.commit", "input_audio_buffer.clear",
               "response.create", "response.cancel", "conversation.item.create", "conversation.item.delete",
               "conversation.item.truncate", "output_audio_buffer.clear"]
FORMAT = st.fixed_dictionaries({"type": st.sampled_from(["audio/pcm", "audio/pcmu", "audio/pcma", "audio/x"])},
                               optional={"rate": st.sampled_from([24000, 16000, 8000, 0, -1, "x"])}) | JSON
TURN = st.none() | st.fixed_dictionaries(
    {"type": st.sampled_from(["server_vad", "semantic_vad", "x"])},
    optional={"threshold": st.sampled_from([0.5, 0.0, 1.5, "x"]), "silence_duration_ms": st.integers(-10, 20000),
              "create_response": LEAF, "eagerness": st.sampled_from(["low", "auto", "x"])})
SESSION = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["realtime", "transcription"]), "instructions": TEXT,
    "output_modalities": st.sampled_from([["audio"], ["text"], ["video"], []]),
    "audio": st.fixed_dictionaries({}, optional={
        "input": st.fixed_dictionaries({}, optional={"format": FORMAT, "turn_detection": TURN,
                                                     "echo_cancellation": st.sampled_from([{"type": "aec3"}, None, 1])}),
        "output": st.fixed_dictionaries({}, optional={"format": FORMAT, "voice": LEAF})})}) | JSON
ITEM = st.fixed_dictionaries({"type": st.sampled_from(["message", "function_call"])}, optional={
    "role": st.sampled_from(["user", "assistant", "system", "tool"]), "id": TEXT,
    "content": st.lists(st.fixed_dictionaries({"type": st.sampled_from(["input_text", "output_text", "x"])},
                                              optional={"text": TEXT}), max_size=2)}) | JSON
FIELDS = {  # by event type: the fields it takes, with values that may or may not fit
    "session.update": {"session": SESSION}, "input_audio_buffer.append": {"audio": B64},
    "response.create": {"response": JSON}, "response.cancel": {"response_id": TEXT},
    "conversation.item.create": {"item": ITEM, "previous_item_id": TEXT},
    "conversation.item.delete": {"item_id": TEXT},
    "conversation.item.truncate": {"item_id": TEXT, "content_index": st.integers(-2, 3),
                                   "audio_end_ms": st.integers(-5, 10**6)},
}


def _event(type_: str) -> st.SearchStrategy[str]:
    fields = FIELDS.get(type_, {})
    return st.builds(lambda given, extra: json.dumps({"type": type_, **given, **extra}),
                     st.fixed_dictionaries({}, optional=fields) if fields else st.just({}),
                     st.sampled_from([{}, {}, {}, {"event_id": "evt_1"}, {"unknown_field": 1}]))


# Events of the known types, with fields that may or may not fit: valid or not, never a crash.
PLAUSIBLE = st.one_of(*(_event(t) for t in KNOWN_TYPES))
# Events that are wrong whatever else they hold: each must be answered with an `error`.
BAD = st.one_of(
    TEXT.filter(lambda t: not t.strip().startswith(("{", "[", '"')) and t.strip() not in ("null",)),
    LEAF.map(json.dumps), st.lists(LEAF, max_size=3).map(json.dumps),
    st.dictionaries(TEXT, LEAF, max_size=2).filter(lambda d: "type" not in d).map(json.dumps),
    st.builds(lambda t, v: json.dumps({"type": t, "audio": v}), TEXT.filter(lambda t: t not in KNOWN_TYPES), B64),
    st.builds(lambda v: json.dumps({"type": "input_audio_buffer.append", "audio": v}),
              st.integers() | st.none() | st.lists(st.integers(), max_size=2)),
    st.builds(lambda v: json.dumps({"type": "conversation.item.delete", "item_id": v}), TEXT),
)
CLIENT_EVENT = st.tuples(st.just(True), BAD) | st.tuples(st.just(False), PLAUSIBLE)


# Words of exceptions a client must not see: internals tripping over input, not its problem named.
INTERNALS = ("Traceback", "NoneType", "object has no attribute", "not in list", "Error:")


def _watch_loop(runner: asyncio.Runner) -> list:
    """Exceptions nobody handled (a background task's, "Task exception was never retrieved")."""
    unhandled: list = []
    runner.get_loop().set_exception_handler(lambda loop, context: unhandled.append(context))
    return unhandled


def _drain(session: RealtimeSession) -> list[dict]:
    out = []
    while not session.outbox.empty():
        out.append(json.loads(session.outbox.get_nowait()))
    return out


def _no_tasks_but(baseline: set) -> set:
    return {t for t in asyncio.all_tasks() - baseline if t is not asyncio.current_task() and not t.done()}


def test_fuzz_realtime_client_events(tmp_path) -> None:
    with asyncio.Runner() as runner:
        unhandled = _watch_loop(runner)
        ctx = ServerContext(fake_config(), build_all(fake_config(), BuildEnv(tmp_path)))
        baseline = runner.run(_current_tasks())
        handled = [0]

        async def feed(events: list[tuple[bool, str]]) -> None:
            session = RealtimeSession(ctx, "websocket", lambda s: WebSocketAudioOutput(s.send, clock=ctx.clock))
            try:
                _drain(session)
                for bad, raw in events:
                    await session.handle_text(raw)
                    errors = [e["error"] for e in _drain(session) if e["type"] == "error"]
                    assert all(e["code"] != "internal_error" for e in errors), (raw, errors)
                    assert not any(w in e["message"] for e in errors for w in INTERNALS), errors
                    if bad:
                        assert errors and errors[-1]["message"], f"no error for {raw!r}"
                    handled[0] += 1
            finally:
                await session.close()

        @_settings(10_000)
        @given(st.lists(CLIENT_EVENT, min_size=BATCH, max_size=BATCH))
        def run(events) -> None:
            runner.run(feed(events))

        run()
        assert handled[0] >= 10_000 * SCALE and not ctx.sessions
        runner.run(_settle(baseline))
        assert not unhandled, unhandled


async def _current_tasks() -> set:
    return set(asyncio.all_tasks())


async def _settle(baseline: set) -> None:
    await wait_until(lambda: not _no_tasks_but(baseline), what=f"no leaked tasks: {_no_tasks_but(baseline)}")


# -- SDP offers --------------------------------------------------------------------------------

OFFER_LINES = [
    "v=0", "o=- 4611731400430051336 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0",
    "a=msid-semantic: WMS", "m=audio 9 UDP/TLS/RTP/SAVPF 111 0", "c=IN IP4 0.0.0.0", "a=rtcp:9 IN IP4 0.0.0.0",
    "a=ice-ufrag:abcd", "a=ice-pwd:abcdefghijklmnopqrstuvwx",
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32), "a=setup:actpass", "a=mid:0", "a=sendrecv", "a=rtcp-mux",
    "a=rtpmap:111 opus/48000/2", "a=fmtp:111 minptime=10;useinbandfec=1", "a=rtpmap:0 PCMU/8000",
    "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host",
]


def _mutate(lines: list[str], edits: list[tuple[int, int, str]]) -> str:
    lines = list(lines)
    for op, at, text in edits:
        i = at % (len(lines) + 1)
        if op == 0 and lines:
            lines.pop(min(i, len(lines) - 1))
        elif op == 1:
            lines.insert(i, text)
        elif lines:
            j = min(i, len(lines) - 1)
            key = lines[j].split("=", 1)[0]
            lines[j] = f"{key}={text}"
    return "\r\n".join(lines) + "\r\n"


EDIT = st.tuples(st.integers(0, 2), st.integers(0, 40), st.text(max_size=30).filter(lambda t: "\r" not in t))
SDP = st.one_of(
    st.lists(EDIT, min_size=1, max_size=4).map(lambda edits: _mutate(OFFER_LINES, edits)),
    st.text(max_size=200).map(lambda t: "v=0\r\n" + t), st.text(max_size=100),
    st.lists(st.sampled_from(OFFER_LINES) | st.text(max_size=20), max_size=20).map("\r\n".join),
)
CONTENT_TYPE = st.sampled_from(["application/sdp"] * 8 + ["text/plain", "application/json", ""])


def test_fuzz_sdp_offers() -> None:
    with asyncio.Runner() as runner:
        unhandled = _watch_loop(runner)
        stack = runner.run(_server_and_client())
        server, http = stack.server, stack.http
        posted = [0]

        async def post_all(offers) -> None:
            for sdp, content_type in offers:
                headers = {"Content-Type": content_type} if content_type else {}
                async with http.post(server.make_url("/v1/realtime/calls"), data=sdp.encode("utf-8", "replace"),
                                     headers=headers) as r:
                    body = await r.text()
                    assert r.status in (201, 400, 413, 415), (r.status, body, sdp)
                    if r.status == 201:  # a usable offer: a call was made; hang it up
                        async with http.post(server.make_url(r.headers["Location"] + "/hangup")) as h:
                            assert h.status == 200
                    else:
                        message = json.loads(body)["error"]["message"]
                        assert message and not any(w in message for w in INTERNALS), message
                posted[0] += 1

        @_settings(2_000, batch=20)
        @given(st.lists(st.tuples(SDP, CONTENT_TYPE), min_size=20, max_size=20))
        def run(offers) -> None:
            runner.run(post_all(offers))

        try:
            run()
            assert posted[0] >= 2_000 * SCALE
            ctx = server_context(server)
            runner.run(wait_until(lambda: not ctx.sessions and ctx.admission.admitted == 0, what="no sessions"))
            assert not unhandled, unhandled
        finally:
            runner.run(stack.close())


class _Stack:
    async def open(self) -> "_Stack":
        # Thousands of offers from one address: the per-IP session rate (tests/test_limits.py) off.
        self._cm = running_server(fake_config(**{"server.limits.sessions_per_ip_per_minute": 0}))
        self.server = await self._cm.__aenter__()
        # force_close: no idle keep-alive connection left over when the server closes
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        return self

    async def close(self) -> None:
        await self.http.close()
        await self._cm.__aexit__(None, None, None)


async def _server_and_client() -> _Stack:
    return await _Stack().open()


# -- Twilio Media Streams messages --------------------------------------------------------------

MULAW = st.binary(max_size=400).map(lambda b: base64.b64encode(b).decode())
TWILIO = st.one_of(
    st.fixed_dictionaries({"event": st.just("start")}, optional={
        "streamSid": TEXT | JSON, "start": st.fixed_dictionaries({}, optional={
            "streamSid": TEXT | JSON, "callSid": TEXT,
            "mediaFormat": st.fixed_dictionaries({}, optional={"encoding": st.sampled_from(["audio/x-mulaw", "x"]) | JSON,
                                                               "sampleRate": st.integers(0, 48000) | JSON})}) | JSON}),
    st.fixed_dictionaries({"event": st.just("media")}, optional={
        "media": st.fixed_dictionaries({}, optional={"track": st.sampled_from(["inbound", "outbound"]) | JSON,
                                                      "payload": MULAW | JSON, "chunk": JSON}) | JSON}),
    st.fixed_dictionaries({"event": st.sampled_from(["mark", "dtmf", "connected", "stop"])},
                          optional={"mark": st.fixed_dictionaries({}, optional={"name": JSON}) | JSON}),
    st.dictionaries(TEXT, JSON, max_size=3),
    JSON.filter(lambda v: not isinstance(v, dict)),
).map(json.dumps) | TEXT | st.binary(max_size=20)


class _NoSocket:
    """TwilioCall.handle never writes to the socket itself."""


def test_fuzz_twilio_messages(tmp_path) -> None:
    with asyncio.Runner() as runner:
        unhandled = _watch_loop(runner)
        ctx = ServerContext(fake_config(), build_all(fake_config(), BuildEnv(tmp_path)))
        baseline = runner.run(_current_tasks())
        handled = {"ok": 0, "refused": 0}

        async def feed(messages) -> None:
            call = None
            try:
                for data in messages:
                    if call is None:
                        call = TwilioCall(ctx, _NoSocket())
                    kind = WSMsgType.BINARY if isinstance(data, bytes) else WSMsgType.TEXT
                    try:
                        going_on = call.handle(WSMessage(kind, data, None))
                    except CallError as exc:  # the server closes the stream with this reason
                        assert str(exc) and exc.code
                        going_on = False
                        handled["refused"] += 1
                    else:
                        handled["ok"] += 1
                    if not going_on:
                        await call.session.close()
                        call = None
            finally:
                if call is not None:
                    await call.session.close()

        @_settings(2_000)
        @given(st.lists(TWILIO, min_size=BATCH, max_size=BATCH))
        def run(messages) -> None:
            runner.run(feed(messages))

        run()
        assert sum(handled.values()) >= 2_000 * SCALE and handled["refused"] and not ctx.sessions
        runner.run(_settle(baseline))
        assert not unhandled, unhandled


def test_fuzz_over_a_real_websocket() -> None:
    """The same events through the WebSocket handler (frames, binary ones too): the connection
    stays up, nothing is internal_error, and it still answers at the end."""
    with asyncio.Runner() as runner:
        unhandled = _watch_loop(runner)
        stack = runner.run(_server_and_client())
        sent = [0]

        async def over_socket(frames) -> None:
            async with stack.http.ws_connect(stack.server.make_url("/v1/realtime")) as ws:
                for frame in frames:
                    await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))
                    sent[0] += 1
                await ws.send_str(json.dumps({"type": "input_audio_buffer.clear"}))
                while True:
                    msg = await asyncio.wait_for(ws.receive(), 30)
                    assert msg.type == WSMsgType.TEXT, msg
                    event = json.loads(msg.data)
                    if event["type"] == "error":
                        assert event["error"]["code"] != "internal_error", event
                    if event["type"] == "input_audio_buffer.cleared":
                        break

        @_settings(1_000)
        @given(st.lists(st.binary(max_size=8) | PLAUSIBLE | BAD,
                        min_size=BATCH, max_size=BATCH))
        def run(frames) -> None:
            runner.run(over_socket(frames))

        try:
            run()
            assert sent[0] >= 1_000 * SCALE
            ctx = server_context(stack.server)
            runner.run(wait_until(lambda: not ctx.sessions, what="no sessions"))
            assert not unhandled, unhandled
        finally:
            runner.run(stack.close())
