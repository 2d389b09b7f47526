"""The carrier adapters end to end (fake stages): Telnyx and Vonage over WebSockets, Asterisk
AudioSocket over TCP. A synthetic caller holds a 3-turn call with a keypress during a reply (not a
barge-in) and a barge-in; bad input ends only its own call, with a reason."""
from __future__ import annotations

import asyncio
import json
import struct

import numpy as np
import pytest

from realtime.session import RealtimeSession
from tests.carriers_util import CALLERS, TELNYX_START, VONAGE_CONNECTED, asterisk_call, telnyx_call, vonage_call
from tests.realtime_util import fake_config, running_server, server_context, silence, tone, wait_until
from tests.telephony_util import assistant_turns

REPLY = "This is a long answer. " * 6  # ≈ 2.8 s of fake audio: still playing when talked over


def config(**overrides):
    return fake_config(**{"server.audiosocket": {"host": "127.0.0.1", "port": 0}, "llm.echo": False,
                          "llm.reply": REPLY, **overrides})


def utterance(rate: int) -> np.ndarray:
    return np.concatenate([tone(1.0, rate), silence(1.2, rate)])


@pytest.fixture
def sent_events(monkeypatch) -> list[dict]:
    """Every Realtime event the sessions send (telephony has no reader for them)."""
    events: list[dict] = []
    send = RealtimeSession.send

    def record(self, event):
        events.append(event)
        send(self, event)
    monkeypatch.setattr(RealtimeSession, "send", record)
    return events


@pytest.mark.parametrize("carrier", list(CALLERS))
async def test_a_three_turn_call_with_a_keypress_and_a_barge_in(carrier, sent_events) -> None:
    async with running_server(config()) as server, CALLERS[carrier](server) as call:
        await call.speak(utterance(call.rate))
        await wait_until(lambda: len(assistant_turns(server)) == 1, what="the first reply")
        session = next(iter(server_context(server).sessions))
        assert session.context.turns[0].role == "user" and session.context.turns[0].text  # heard
        assert assistant_turns(server)[0].text == REPLY.strip()
        assert sum(len(a) for _, a in call.audio) / call.rate == pytest.approx(len(REPLY) * 0.02, rel=0.3)

        # turn 2: a key pressed while the reply plays reaches the session and the context, and
        # the reply plays on
        n = len(call.audio)
        await call.speak(utterance(call.rate))
        await call.wait(lambda: len(call.audio) > n + 10, "the second reply's audio")
        await call.press("1")
        await wait_until(lambda: len(assistant_turns(server)) == 2, what="the second reply")
        assert assistant_turns(server)[1].text == REPLY.strip()
        dtmf = [e for e in sent_events if e["type"] == "input_audio_buffer.dtmf_event_received"]
        assert [e["event"] for e in dtmf] == ["1"] and isinstance(dtmf[0]["received_at"], int)
        assert any(t.role == "system" and "pressed 1" in t.text for t in session.context.turns)

        # turn 3: the caller talks over the reply: it is cut, and what was heard is kept
        n = len(call.audio)
        await call.speak(utterance(call.rate))
        await call.wait(lambda: len(call.audio) > n + 10, "the third reply's audio")
        await call.speak(np.concatenate([tone(1.0, call.rate), silence(1.2, call.rate)]))  # words: not a cough
        await wait_until(lambda: len(assistant_turns(server)) >= 3, what="the cut reply in the history")
        cut = assistant_turns(server)[2].text
        assert cut != REPLY.strip() and REPLY.startswith(cut)
        if carrier == "telnyx":
            assert any(c.get("event") == "clear" for c in call.controls)
        elif carrier == "vonage":
            assert {"action": "clear"} in call.controls
        await wait_until(lambda: len(assistant_turns(server)) == 4, what="the interruption's own reply")
    await wait_until(lambda: not server_context(server).sessions, what="session cleanup")


async def _ws_refused(make_call, server, messages, reason: str) -> None:
    async with make_call(server, start=False) as call:
        for m in messages:
            await call.send(m)
        await call.wait(lambda: call.closed_with is not None, "the close")
        assert reason in call.closed_with


async def _asterisk_refused(server, messages, reason: str, start: bool = True) -> None:
    async with asterisk_call(server, start=start) as call:
        for kind, payload in messages:
            await call.send_raw(kind, payload)
        await call.wait(lambda: call.closed_with is not None, "the close")
        errors = [c["payload"].decode() for c in call.controls if c["kind"] == 0xFF]
        assert errors and reason in errors[0], call.controls


BAD_TELNYX = [
    ([{"event": "media", "stream_id": "x", "media": {"payload": "AAAA"}}], "'media' before 'start'"),
    (["{not json"], "not valid JSON"),
    ([{**TELNYX_START, "start": {**TELNYX_START["start"], "media_format": {"encoding": "OPUS"}}}],
     "start: start.media_format.encoding"),
    ([TELNYX_START, {"event": "media", "stream_id": "x", "media": {"payload": "!!"}}], "not valid base64"),
    ([TELNYX_START, {"event": "dtmf", "dtmf": {"digit": "x"}}], "not a keypad key"),
]
BAD_VONAGE = [
    ([b"\x00" * 640], "audio before websocket:connected"),
    ([{"event": "websocket:connected", "content-type": "audio/pcmu"}], "content-type"),
    ([VONAGE_CONNECTED, b"\x00" * 100], "audio frames are 640 bytes"),
]
BAD_ASTERISK = [
    ([(0x10, b"\x00" * 320)], "before the UUID", False),
    ([(0x01, b"short")], "16 bytes", False),
    ([(0x10, b"\x00" * 321)], "audio of 321 bytes", True),
    ([(0x42, b"")], "unknown message kind 0x42", True),
    ([(0x03, b"12")], "1 byte", True),
]


async def test_bad_input_ends_only_its_own_call() -> None:
    async with running_server(config(**{"llm.echo": True})) as server, telnyx_call(server) as good:
        def bad_calls():
            yield from (_ws_refused(telnyx_call, server, m, r) for m, r in BAD_TELNYX)
            yield from (_ws_refused(vonage_call, server, m, r) for m, r in BAD_VONAGE)
            yield from (_asterisk_refused(server, m, r, s) for m, r, s in BAD_ASTERISK)
        speaking = asyncio.create_task(good.speak(utterance(8000)))
        for bad in bad_calls():
            await bad
        # a caller that hangs up by dropping the TCP connection mid-frame
        async with asterisk_call(server) as dropped:
            dropped.writer.write(struct.pack(">BH", 0x10, 320) + b"\x00" * 100)
            await dropped.writer.drain()
        await speaking
        await wait_until(lambda: assistant_turns(server), what="the good call's reply")
        await good.wait(lambda: len(good.audio) > 10, "the good call's audio")
        assert good.closed_with is None
        await wait_until(lambda: len(server_context(server).sessions) == 1, what="the bad calls' cleanup")
    await wait_until(lambda: not server_context(server).sessions, what="session cleanup")


async def test_call_parameters_reach_the_instructions_and_hangups_end_calls() -> None:
    async with running_server(config()) as server:
        async with telnyx_call(server) as call:
            await wait_until(lambda: server_context(server).sessions, what="the session")
            session = next(iter(server_context(server).sessions))
            await wait_until(lambda: "customer_123" in session.context.system_prompt, what="the parameters")
            await call.send({"event": "stop", "stream_id": "x"})
            await call.wait(lambda: call.closed_with is not None, "the close")
            assert call.closed_with == "call ended"
        async with vonage_call(server) as call:
            await wait_until(lambda: server_context(server).sessions, what="the session")
            session = next(iter(server_context(server).sessions))
            await wait_until(lambda: "caller_name: Ada" in session.context.system_prompt, what="the headers")
        async with asterisk_call(server) as call:
            await call.send_raw(0x00)
            await call.wait(lambda: call.closed_with is not None, "the close")
            assert {"kind": 0x00, "payload": b""} in call.controls
        await wait_until(lambda: not server_context(server).sessions, what="session cleanup")


async def test_vonage_at_8khz_gets_320_byte_frames() -> None:
    async with running_server(config(**{"llm.echo": True})) as server, vonage_call(server, start=False) as call:
        call.rate = 8000
        await call.send({**VONAGE_CONNECTED, "content-type": "audio/l16;rate=8000"})
        await call.speak(utterance(8000))
        await wait_until(lambda: assistant_turns(server), what="the reply")
        assert call.audio and all(len(a) == 160 for _, a in call.audio)  # 20 ms at 8 kHz
        session = next(iter(server_context(server).sessions))
        assert session.input.rate == 8000 and session.context.turns[0].text.startswith("w0")
