"""The official openai SDK's Realtime client against our server (fake stages).

The SDK builds its URL as <base_url>/realtime?model=... with ws:// for http://, so base_url
http://127.0.0.1:<port>/v1 lands on GET /v1/realtime. Every event is parsed by the SDK itself.
"""
from __future__ import annotations

import asyncio

import pytest
from openai import AsyncOpenAI

from tests.realtime_util import WAIT, append_events, fake_config, running_server, utterance


async def receive_until(conn, type_: str, seen: list, timeout: float = WAIT) -> object:
    async def loop():
        async for event in conn:
            seen.append(event)
            if event.type == type_:
                return event
        raise AssertionError(f"connection closed before {type_}")
    return await asyncio.wait_for(loop(), timeout)


async def test_sdk_two_turn_conversation() -> None:
    async with running_server(fake_config()) as server:
        client = AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk-test")
        async with client.realtime.connect(model="step-realtime") as conn:
            seen: list = []
            created = await receive_until(conn, "session.created", seen)
            assert created.session.model == "step-realtime"
            await conn.session.update(session={"type": "realtime", "instructions": "Answer briefly.",
                                               "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}}}})
            updated = await receive_until(conn, "session.updated", seen)
            assert updated.session.instructions == "Answer briefly."
            for turn in range(2):
                start = len(seen)
                for event in append_events(utterance(1.0 + 0.4 * turn)):
                    await conn.input_audio_buffer.append(audio=event["audio"])
                done = await receive_until(conn, "response.done", seen)
                turn_events = seen[start:]
                types = [e.type for e in turn_events]
                for expected in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                                 "input_audio_buffer.committed",
                                 "conversation.item.input_audio_transcription.completed",
                                 "response.created", "response.output_audio.delta",
                                 "response.output_audio_transcript.delta", "response.output_audio.done"):
                    assert expected in types, f"turn {turn}: no {expected} in {types}"
                transcript = next(e for e in turn_events
                                  if e.type == "conversation.item.input_audio_transcription.completed")
                assert transcript.transcript.startswith("w0")
                assert done.response.status == "completed"
                assert done.response.output[0].content[0].transcript == f"You said: {transcript.transcript}."
                audio = [e for e in turn_events if e.type == "response.output_audio.delta"]
                assert all(e.response_id == done.response.id for e in audio)
            # our own events come through the SDK too, as plain typed-by-name objects
            assert any(getattr(e, "type", "") == "step.state" for e in seen)


@pytest.mark.integration
async def test_sdk_with_the_embedded_models() -> None:
    """The real embedded stack (configs/default.yaml, `make models`): spoken English in, a spoken
    answer out, through the SDK."""
    import base64

    import numpy as np

    from realtime.config import load_config
    from tests.browser_util import spoken_sentence
    from tests.realtime_util import REPO

    speech = spoken_sentence("What is the capital of France?", 24_000)
    pcm = (np.concatenate([np.zeros(4800), speech, np.zeros(36_000)]) * 32767).astype("<i2")
    async with running_server(load_config(REPO / "configs" / "default.yaml", {"server.port": 0, "server.auth.enabled": False})) as server:
        async with AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk-test") as client:
            async with client.realtime.connect(model="step-realtime") as conn:
                seen: list = []
                await receive_until(conn, "session.created", seen)
                for i in range(0, len(pcm), 2400):
                    await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i:i + 2400].tobytes()).decode())
                done = await receive_until(conn, "response.done", seen, timeout=120)
    transcript = next(e.transcript for e in seen if e.type == "conversation.item.input_audio_transcription.completed")
    assert "france" in transcript.lower()
    assert done.response.status == "completed" and done.response.output[0].content[0].transcript
    audio_bytes = sum(len(base64.b64decode(e.delta)) for e in seen if e.type == "response.output_audio.delta")
    assert audio_bytes > 0.5 * 48_000  # at least half a second of 24 kHz PCM16
