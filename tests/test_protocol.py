"""Client event parsing, server event shapes (checked against the openai SDK's own types), input
audio framing and the two AudioOutputs — without a server."""
from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest
from openai.types.realtime.realtime_server_event import RealtimeServerEvent
from pydantic import TypeAdapter

from controller import events as ev
from decoder.base import AudioChunk
from realtime import protocol as p
from realtime.audio import AudioFormatError, PcmInput
from realtime.events_out import EventRenderer
from realtime.outputs import WebRTCAudioOutput, WebSocketAudioOutput

SDK_EVENT = TypeAdapter(RealtimeServerEvent)
MAX = 10_000


def parse(event) -> p.ClientEvent:
    return p.parse_client_event(json.dumps(event) if not isinstance(event, str) else event, MAX)


def error_of(event) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as exc:
        parse(event)
    return exc.value


# -- client events ---------------------------------------------------------------------------------

def test_valid_client_events_parse() -> None:
    assert isinstance(parse({"type": "input_audio_buffer.append", "audio": "AAA="}), p.InputAudioBufferAppend)
    t = parse({"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, "audio_end_ms": 5,
               "event_id": "ev1"})
    assert (t.item_id, t.audio_end_ms, t.event_id) == ("i", 5, "ev1")
    u = parse({"type": "session.update", "session": {"type": "realtime", "tools": [], "instructions": "x"}})
    assert u.session.instructions == "x"  # unused fields (tools) are ignored
    assert parse({"type": "response.create"}).type == "response.create"


@pytest.mark.parametrize("raw, code, param", [
    ("{not json", "invalid_json", None),
    ("[1, 2]", "invalid_event", None),
    ({"audio": "AAA="}, "missing_field", "type"),
    ({"type": "conversation.item.retrieve"}, "unknown_event", "type"),
    ({"type": "input_audio_buffer.append"}, "missing_field", "audio"),
    ({"type": "conversation.item.truncate", "item_id": "i", "content_index": 0}, "missing_field", "audio_end_ms"),
    ({"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, "audio_end_ms": -1},
     "invalid_value", "audio_end_ms"),
    ({"type": "session.update", "session": {"type": "transcription"}}, "invalid_value", "session.type"),
])
def test_bad_client_events_name_the_problem(raw, code, param) -> None:
    err = error_of(raw)
    assert err.code == code and err.param == param
    rendered = SDK_EVENT.validate_python({"event_id": "e", **err.event()})
    assert rendered.type == "error" and rendered.error.code == code


def test_oversized_event_and_event_id_echo() -> None:
    err = error_of({"type": "input_audio_buffer.append", "audio": "A" * MAX})
    assert err.code == "event_too_large" and str(MAX) in err.message
    err = error_of({"type": "nope", "event_id": "client-7"})
    assert err.event()["error"]["event_id"] == "client-7"


def test_session_update_formats() -> None:
    settings = p.SessionSettings(instructions="hi")
    upd = parse({"type": "session.update", "session": {"audio": {
        "input": {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None},
        "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"}}}}).session
    new = settings.apply(upd)
    assert (new.input_rate, new.output_rate, new.voice, new.turn_detection) == (16000, 24000, "marin", None)
    assert settings.turn_detection == {"type": "server_vad"}  # the original is untouched
    keep = settings.apply(parse({"type": "session.update", "session": {"instructions": "x"}}).session)
    assert keep.turn_detection == {"type": "server_vad"}  # absent is not null
    for fmt, param in (({"type": "audio/g729"}, "session.audio.input.format"),
                       ({"type": "audio/pcm", "rate": 11025}, "session.audio.input.format.rate")):
        with pytest.raises(p.ProtocolError) as exc:
            settings.apply(parse({"type": "session.update", "session": {"audio": {"input": {"format": fmt}}}}).session)
        assert exc.value.code == "unsupported_audio_format" and exc.value.param == param


# -- server events ---------------------------------------------------------------------------------

def test_every_server_event_matches_the_sdk_types() -> None:
    settings = p.SessionSettings(instructions="sys")
    r = EventRenderer(settings)
    script = [
        ev.StateChanged("user_speaking", "silence", "speech", 80),
        ev.SpeechStarted("item_u", 20),
        ev.Speculation("started", 700),
        ev.SpeechStopped("item_u", 1020),
        ev.InputCommitted("item_u"),
        ev.InputTranscript("item_u", "hello there"),
        ev.ResponseCreated("resp_1", "item_a"),
        ev.TranscriptDelta("resp_1", "item_a", "Hi. "),
        ev.AudioDone("resp_1", "item_a"),
        ev.ResponseDone("resp_1", "item_a", "completed", "Hi."),
        ev.TurnMetrics("resp_1", True, {"saved_ms": 120.0}),
        ev.ResponseCreated("resp_2", "item_b"),
        ev.ResponseDone("resp_2", "item_b", "cancelled", "", "barge_in"),
        ev.ResponseDone("resp_3", "item_c", "failed", "", "boom"),
        ev.ErrorEvent("reply_failed", "boom"),
    ]
    rendered = [{"type": "session.created", "session": settings.render()},
                {"type": "session.updated", "session": settings.render()}]
    for event in script:
        out = r.render(event)
        assert out, f"{event} rendered nothing"
        rendered += out
    standard = [e for e in rendered if not e["type"].startswith("step.")]
    assert {e["type"] for e in rendered} - {e["type"] for e in standard} == {
        "step.state", "step.speculation", "step.turn_metrics"}
    for event in standard:
        parsed = SDK_EVENT.validate_python({"event_id": "event_1", **event})
        assert parsed.type == event["type"]
    by_type = {e["type"]: e for e in rendered}
    assert by_type["conversation.item.input_audio_transcription.completed"]["usage"]["seconds"] == 1.0
    assert by_type["response.output_audio_transcript.done"]["transcript"] == "Hi. "
    assert by_type["input_audio_buffer.committed"]["previous_item_id"] is None
    cancelled = [e for e in rendered if e["type"] == "response.done"][1]["response"]
    assert cancelled["status_details"] == {"type": "cancelled", "reason": "turn_detected"}


# -- input audio ----------------------------------------------------------------------------------

def test_pcm_input_resamples_to_16k_frames() -> None:
    inp = PcmInput(24_000)
    pcm = (8000 * np.sin(2 * np.pi * 300 * np.arange(24_000) / 24_000)).astype("<i2")
    frames = []
    for i in range(0, len(pcm), 999):  # odd chunk sizes: frames still come out whole
        frames += inp.append(base64.b64encode(pcm[i:i + 999].tobytes()).decode())
    assert all(len(f) == 320 and f.dtype == np.int16 for f in frames)
    assert 48 <= len(frames) <= 50  # 1 s = 50 frames, less the resampler's delay
    rms = np.sqrt(np.mean(np.concatenate(frames[5:]).astype(float) ** 2))
    assert 5000 < rms < 6000  # 8000 / sqrt(2): the tone survived


def test_pcm_input_rejects_bad_audio() -> None:
    inp = PcmInput()
    with pytest.raises(AudioFormatError, match="base64"):
        inp.append("not base64!!")
    with pytest.raises(AudioFormatError, match="odd number"):
        inp.append(base64.b64encode(b"abc").decode())
    with pytest.raises(AudioFormatError, match="unsupported input rate"):
        PcmInput(11_025)


# -- outputs --------------------------------------------------------------------------------------

def chunk(seconds: float, rate: int = 16_000) -> AudioChunk:
    return AudioChunk(np.full(int(seconds * rate), 1000, dtype=np.int16), rate, "words")


async def test_websocket_output_estimates_playback() -> None:
    now = [100.0]
    sent: list[dict] = []
    out = WebSocketAudioOutput(sent.append, 24_000, clock=lambda: now[0])
    out.write(chunk(0.5))
    assert not sent  # no reply yet: nothing plays
    out.begin_reply("resp_1", "item_1")
    out.write(chunk(1.0))
    assert sent and sent[0]["type"] == "response.output_audio.delta" and sent[0]["response_id"] == "resp_1"
    assert out.played_seconds() == 0.0
    now[0] += 0.4
    assert out.played_seconds() == pytest.approx(0.4)
    now[0] += 5.0
    assert out.played_seconds() <= 1.0  # capped at what was sent
    out.begin_reply("resp_2", "item_2")
    out.write(chunk(1.0))
    now[0] += 0.3
    out.clear()
    now[0] += 1.0
    assert out.played_seconds() == pytest.approx(0.3)  # frozen at the barge-in
    n = len(sent)
    out.write(chunk(0.2))
    assert len(sent) == n  # a cancelled reply's late chunk is dropped
    await asyncio.wait_for(out.drain(), 1)  # cleared: returns at once


async def test_websocket_output_drain_waits_for_the_estimate() -> None:
    out = WebSocketAudioOutput(lambda e: None, 24_000)
    out.begin_reply("r", "i")
    out.write(chunk(0.15))
    task = asyncio.create_task(out.drain())
    await asyncio.sleep(0)
    assert not task.done()
    out.clear()
    await asyncio.wait_for(task, 1)  # clear() wakes a waiting drain


async def test_webrtc_track_plays_frames_and_clears_at_once() -> None:
    track = WebRTCAudioOutput()
    silent = await track.recv()
    assert silent.sample_rate == 48_000 and silent.samples == 960
    assert not np.any(silent.to_ndarray())
    track.begin_reply("r", "i")
    track.write(chunk(0.2))  # 16 kHz → 48 kHz, 10 frames
    frames = [await track.recv() for _ in range(3)]
    assert any(np.any(f.to_ndarray()) for f in frames)
    assert track.played_seconds() == pytest.approx(0.06)
    assert frames[1].pts - frames[0].pts == 960
    track.clear()
    after = await track.recv()
    assert not np.any(after.to_ndarray())  # the very next frame is silence
    assert track.played_seconds() == pytest.approx(0.06)
    track.begin_reply("r2", "i2")
    track.write(chunk(0.05))
    drain = asyncio.create_task(track.drain())
    while not drain.done():
        await track.recv()
    assert track.played_seconds() == pytest.approx(0.06)  # 2.5 frames, padded to 3
    track.stop()
