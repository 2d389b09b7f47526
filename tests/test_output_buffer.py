"""output_audio_buffer.started / .stopped / .cleared (WebRTC): the wrapper on its own, then a WebRTC
call (aiortc caller, fake stages) that hears a reply, clears one and barges in on another."""
from __future__ import annotations

import aiohttp
import numpy as np
from openai.types.realtime.realtime_server_event import RealtimeServerEvent
from pydantic import TypeAdapter

from decoder.base import AudioChunk
from realtime.output_buffer import OutputBufferEvents
from tests.fakes import FakeOutput
from tests.realtime_util import fake_config, running_server
from tests.webrtc_util import RATE, Caller, SyntheticMic, mic_audio

SDK_EVENT = TypeAdapter(RealtimeServerEvent)
LONG_REPLY = "This is a long answer. " * 12  # ≈ 5 s of fake audio


def chunk(seconds: float = 0.2) -> AudioChunk:
    return AudioChunk(np.full(int(seconds * 16_000), 1000, dtype=np.int16), 16_000, "words")


async def test_wrapper_reports_the_buffer_life() -> None:
    sent: list[dict] = []
    inner = FakeOutput()
    out = OutputBufferEvents(inner, sent.append)
    out.clear()  # nothing playing: nothing to report
    out.begin_reply("resp_1", "item_1")
    out.write(AudioChunk(np.zeros(0, dtype=np.int16), 16_000, ""))  # no audio yet
    assert sent == []
    out.write(chunk())
    out.write(chunk())
    assert sent == [{"type": "output_audio_buffer.started", "response_id": "resp_1"}]
    await out.drain()
    assert len(sent) == 1  # stopped waits for response.done
    out.response_done("resp_0")
    assert len(sent) == 1
    out.response_done("resp_1")
    assert sent[-1] == {"type": "output_audio_buffer.stopped", "response_id": "resp_1"}
    out.clear()  # after it stopped there is nothing to clear
    assert len(sent) == 2 and inner.cleared == 2 and inner.played_seconds() == out.played_seconds()

    out.begin_reply("resp_2", "item_2")
    out.write(chunk())
    out.clear()  # barge-in
    assert sent[-1] == {"type": "output_audio_buffer.cleared", "response_id": "resp_2"}
    out.write(chunk())  # a late chunk of the cancelled reply: not a new start
    await out.drain()
    out.response_done("resp_2")
    assert [e["type"] for e in sent[2:]] == ["output_audio_buffer.started", "output_audio_buffer.cleared"]
    for event in sent:
        SDK_EVENT.validate_python({"event_id": "e", **event})


async def test_webrtc_call_gets_buffer_events() -> None:
    cfg = fake_config(**{"llm.echo": False, "llm.reply": LONG_REPLY})
    async with running_server(cfg) as server, aiohttp.ClientSession() as http:
        caller = Caller(SyntheticMic(mic_audio()))
        try:
            await caller.connect(http, str(server.make_url("/v1/realtime/calls")))
            await caller.next("session.created")
            caller.send({"type": "output_audio_buffer.clear"})  # no response yet (the caller speaks 1.5 s)
            assert (await caller.next("error"))["error"]["code"] == "output_audio_buffer_empty"
            # 1. the client clears a reply that is playing: cancelled, buffer cleared, no `stopped`
            part = await caller.next("response.content_part.added")
            started = await caller.next("output_audio_buffer.started")
            rid = started["response_id"]
            assert part["response_id"] == rid and caller.events.index(part) < caller.events.index(started)
            caller.send({"type": "output_audio_buffer.clear"})
            cleared = await caller.next("output_audio_buffer.cleared")
            done = await caller.next("response.done")
            assert cleared["response_id"] == rid == done["response"]["id"]
            assert done["response"]["status_details"]["reason"] == "client_cancelled"
            # 2. the caller talks over the next reply: barge-in clears it
            mark = len(caller.events)
            caller.send({"type": "response.create"})
            started = await caller.next("output_audio_buffer.started", after=mark)
            caller.mic.say(np.concatenate([(8000 * np.sin(2 * np.pi * 300 * np.arange(int(0.8 * RATE)) / RATE))
                                           .astype(np.int16), np.zeros(int(1.5 * RATE), np.int16)]))
            cleared = await caller.next("output_audio_buffer.cleared", after=mark)
            assert cleared["response_id"] == started["response_id"]
            done = await caller.next("response.done", after=mark)
            assert done["response"]["status_details"]["reason"] == "turn_detected"
            # 3. the interruption gets a reply; let it play out: started, response.done, stopped
            mark = caller.events.index(done) + 1
            started = await caller.next("output_audio_buffer.started", after=mark)
            stopped = await caller.next("output_audio_buffer.stopped", after=mark, timeout=60)
            done = await caller.next("response.done", after=mark)
            assert stopped["response_id"] == started["response_id"] == done["response"]["id"]
            assert done["response"]["status"] == "completed"
            assert caller.events.index(done) < caller.events.index(stopped)
            assert [e["type"] for e in caller.events].count("output_audio_buffer.stopped") == 1
            # 4. a clear with nothing playing is acknowledged and cancels nothing
            mark = len(caller.events)
            caller.send({"type": "output_audio_buffer.clear"})
            assert (await caller.next("output_audio_buffer.cleared", after=mark))["response_id"] == done["response"]["id"]
            assert "response.done" not in [e["type"] for e in caller.events[mark:]]
            for e in caller.events:
                if e["type"].startswith("output_audio_buffer."):
                    SDK_EVENT.validate_python(e)
        finally:
            await caller.close()
