"""The Realtime WebSocket end to end, with the fake stages (configs/fake.yaml)."""
from __future__ import annotations

import asyncio
import threading

import aiohttp
import pytest

from tests.realtime_util import (
    fake_config, running_server, server_context, silence, tone, utterance, wait_until, ws_client,
)

LONG_REPLY = "This is a long answer. " * 12  # ≈ 5 s of fake audio: still playing when interrupted


async def test_two_turns_with_server_vad() -> None:
    async with running_server() as server, ws_client(server) as c:
        llm = server_context(server).stages["llm"]
        for turn in range(2):
            await c.send_audio(utterance(1.0 + turn * 0.4))
            started = await c.next("input_audio_buffer.speech_started")
            stopped = await c.next("input_audio_buffer.speech_stopped")
            assert stopped["item_id"] == started["item_id"]
            assert stopped["audio_end_ms"] > started["audio_start_ms"]
            committed = await c.next("input_audio_buffer.committed")
            assert committed["item_id"] == started["item_id"]
            transcript = await c.next("conversation.item.input_audio_transcription.completed")
            assert transcript["item_id"] == started["item_id"]
            assert transcript["transcript"].startswith("w0 w1")
            created = await c.next("response.created")
            rid = created["response"]["id"]
            done = await c.next("response.done")
            assert done["response"]["id"] == rid and done["response"]["status"] == "completed"
            deltas = [e for e in c.of_type("response.output_audio.delta") if e["response_id"] == rid]
            assert deltas, "no audio for the reply"
            said = "".join(e["delta"] for e in c.of_type("response.output_audio_transcript.delta")
                           if e["response_id"] == rid)
            assert said.strip() == f"You said: {transcript['transcript']}."
            assert done["response"]["output"][0]["content"][0]["transcript"] == said.strip()
            assert c.index(transcript) < c.index(created) < c.index(done)
            metrics = await c.next("step.turn_metrics", response_id=rid)
            assert metrics["values"]["end_of_turn_delay_ms"] > 0
        # the second turn's prompt carries the first turn (history as text)
        last_prompt = [m.content for m in llm.streams[-1].messages]
        assert any(m.startswith("You said: w0") for m in last_prompt[:-1])
        states = [e["state"] for e in c.of_type("step.state")]
        assert states[:4] == ["user_speaking", "user_paused", "bot_replying", "silence"]
        assert all(e["event_id"] for e in c.events)


async def test_barge_in_cancels_the_reply() -> None:
    cfg = fake_config(**{"llm.echo": False, "llm.reply": LONG_REPLY})
    async with running_server(cfg) as server, ws_client(server) as c:
        await c.send_audio(utterance())
        created = await c.next("response.created")
        await c.next("response.output_audio.delta")
        await c.send_audio(tone(0.6))  # talk over the reply
        done = await c.next("response.done")
        assert done["response"]["id"] == created["response"]["id"]
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "turn_detected"
        heard = done["response"]["output"][0]["content"][0]["transcript"]
        assert len(heard) < len(LONG_REPLY.strip())
        assert len(c.of_type("input_audio_buffer.speech_started")) == 2
        # the user's new turn goes on to its own reply
        await c.send_audio(silence(1.2))
        second = await c.next("response.created")
        assert second["response"]["id"] != created["response"]["id"]


async def test_manual_turns_commit_and_response_create() -> None:
    async with running_server() as server, ws_client(server) as c:
        await c.send({"type": "session.update",
                      "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}})
        updated = await c.next("session.updated")
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        await c.send({"type": "input_audio_buffer.commit"})
        assert (await c.next("error"))["error"]["code"] == "input_audio_buffer_commit_empty"
        for turn, seconds in enumerate((1.0, 0.4)):
            await c.send_audio(np_concat(tone(seconds), silence(0.3)))
            await c.send({"type": "input_audio_buffer.commit"})
            committed = await c.next("input_audio_buffer.committed")
            transcript = await c.next("conversation.item.input_audio_transcription.completed")
            assert transcript["item_id"] == committed["item_id"]
            # each turn is transcribed on its own: the buffer starts empty after a commit
            assert len(transcript["transcript"].split()) == int(seconds * 50) // 10
            assert not c.of_type("response.created")[turn:], "manual mode must wait for response.create"
            await c.send({"type": "response.create"})
            done = await c.next("response.done")
            assert done["response"]["status"] == "completed"
        ids = [e["item_id"] for e in c.of_type("input_audio_buffer.committed")]
        assert len(set(ids)) == 2
        assert not c.of_type("input_audio_buffer.speech_started")  # no server VAD
        await c.send_audio(tone(0.5))
        await c.send({"type": "input_audio_buffer.clear"})
        await c.next("input_audio_buffer.cleared")
        await c.send({"type": "input_audio_buffer.commit"})
        assert (await c.next("error"))["error"]["code"] == "input_audio_buffer_commit_empty"


async def test_response_cancel_and_truncate() -> None:
    cfg = fake_config(**{"llm.echo": False, "llm.reply": LONG_REPLY})
    async with running_server(cfg) as server, ws_client(server) as c:
        await c.send({"type": "response.cancel"})
        assert (await c.next("error"))["error"]["code"] == "response_cancel_not_active"
        await c.send_audio(utterance())
        created = await c.next("response.created")
        await c.next("response.output_audio.delta")
        await c.send({"type": "response.create"})
        assert (await c.next("error"))["error"]["code"] == "conversation_already_has_active_response"
        await c.send({"type": "response.cancel"})
        done = await c.next("response.done")
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "client_cancelled"
        item_id = done["response"]["output"][0]["id"]
        added = await c.next("response.output_item.added")
        assert added["item"]["id"] == item_id and added["response_id"] == created["response"]["id"]
        await c.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                      "audio_end_ms": 0})
        truncated = await c.next("conversation.item.truncated")
        assert truncated["item_id"] == item_id and truncated["audio_end_ms"] == 0
        context = next(iter(server_context(server).sessions)).context
        assert [t.text for t in context.turns if t.item_id == item_id] == [""]
        await c.send({"type": "conversation.item.truncate", "item_id": "item_nope", "content_index": 0,
                      "audio_end_ms": 10})
        err = await c.next("error")
        assert err["error"]["code"] == "item_truncate_invalid_item_id" and err["error"]["param"] == "item_id"


async def test_instructions_become_the_system_prompt() -> None:
    async with running_server() as server, ws_client(server) as c:
        await c.send({"type": "session.update", "session": {"type": "realtime", "instructions": "Be a pirate."}})
        assert (await c.next("session.updated"))["session"]["instructions"] == "Be a pirate."
        await c.send_audio(utterance())
        await c.next("response.done")
        first = server_context(server).stages["llm"].streams[-1].messages[0]
        assert (first.role, first.content) == ("system", "Be a pirate.")


async def test_silence_duration_sets_end_of_turn() -> None:
    async with running_server() as server, ws_client(server) as c:
        await c.send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 1500}}}}})
        td = (await c.next("session.updated"))["session"]["audio"]["input"]["turn_detection"]
        assert td["silence_duration_ms"] == 1500 and td["type"] == "server_vad"
        await c.send_audio(utterance(1.0, 1.0))  # 1 s of silence: not the end of the turn any more
        await c.send_audio(tone(0.01))  # flush: one more frame is processed after the silence
        await c.send({"type": "input_audio_buffer.clear"})
        await c.next("input_audio_buffer.cleared")
        assert not c.of_type("input_audio_buffer.committed")


async def test_max_sessions_and_metrics() -> None:
    async with running_server(fake_config(**{"server.max_sessions": 1})) as server:
        async with ws_client(server) as c:
            async with aiohttp.ClientSession() as http:
                with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                    await http.ws_connect(server.make_url("/v1/realtime"))
                assert exc.value.status == 503
                await c.send_audio(utterance())
                await c.next("response.done")
                await c.next("step.turn_metrics")
                async with http.get(server.make_url("/metrics.json")) as r:
                    m = await r.json()
                assert m["sessions"]["active"] == 1 and m["sessions"]["by_transport"] == {"websocket": 1}
                assert m["speculation"]["started"] >= 1 and m["turns"]["recent"] == 1
                assert "eot_to_first_audio_ms" in m["turns"]["median_ms"]
                async with http.get(server.make_url("/healthz")) as r:
                    assert (await r.json())["ok"] is True
        await wait_until(lambda: not server_context(server).sessions, what="session cleanup")


async def test_healthz_fails_while_a_model_worker_is_wedged() -> None:
    """Liveness turns 503 (with the lane) once a worker thread has been in one call longer than
    server.model_stuck_after_s, and recovers when the call returns."""
    async with running_server(fake_config(**{"server.model_stuck_after_s": 0.2})) as server, \
            aiohttp.ClientSession() as http:
        lane = server_context(server).scheduler.lane("wedge", 1)
        gate = threading.Event()
        call = asyncio.create_task(lane.run(gate.wait))
        try:
            await asyncio.sleep(0.4)
            async with http.get(server.make_url("/healthz")) as r:
                body = await r.json()
                assert r.status == 503 and body["ok"] is False and list(body["stuck"]) == ["wedge"]
        finally:
            gate.set()  # the thread must end even when an assertion failed
        await call
        async with http.get(server.make_url("/healthz")) as r:
            assert r.status == 200 and (await r.json())["ok"] is True


async def test_web_client_routes() -> None:
    async with running_server() as server, aiohttp.ClientSession() as http:
        async with http.get(server.make_url("/")) as r:
            assert r.status in (200, 404)
            if r.status == 404:
                assert "web client" in await r.text()
        async with http.get(server.make_url("/..%2f..%2fpyproject.toml")) as r:
            assert r.status == 404


def np_concat(*parts):
    import numpy as np

    return np.concatenate(parts)


async def test_transcription_language_reaches_the_tokenizer() -> None:
    """audio.input.transcription.language tells the ASR the caller's language; one it does not
    know is an error that changes nothing, and null goes back to detecting."""
    async with running_server() as server, ws_client(server) as c:
        tokenizer = server_context(server).stages["tokenizer"].created[-1]

        async def update(transcription):
            await c.send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
                "transcription": transcription}}}})

        await update({"model": "whisper-base", "language": "zh"})
        rendered = (await c.next("session.updated"))["session"]["audio"]["input"]["transcription"]
        assert rendered == {"model": "whisper-base", "language": "zh"} and tokenizer.language == "zh"
        await update({"language": "xx"})
        err = await c.next("error")
        assert err["error"]["code"] == "invalid_value"
        assert err["error"]["param"] == "session.audio.input.transcription.language"
        await update({"language": "Chinese"})  # not an ISO code
        assert (await c.next("error"))["error"]["type"] == "invalid_request_error"
        assert tokenizer.language == "zh"  # the refused updates changed nothing
        await c.send_audio(utterance())
        await c.next("response.done")
        await update(None)
        assert (await c.next("session.updated"))["session"]["audio"]["input"]["transcription"] is None
        assert tokenizer.language is None
