"""WebRTC end to end: an aiortc caller posts its offer, speaks, hears the reply on the remote track
and gets the Realtime events on the oai-events data channel (fake stages, loopback only)."""
from __future__ import annotations

import aiohttp
from openai import AsyncOpenAI

from realtime.arrival_buffer import ArrivalBuffer
from realtime.webrtc import CALLS_KEY, receive_buffer
from tests.realtime_util import fake_config, running_server, server_context, wait_until
from tests.webrtc_util import Caller, SyntheticMic, mic_audio


async def test_call_speak_and_hear_the_reply() -> None:
    async with running_server() as server, aiohttp.ClientSession() as http:
        caller = Caller(SyntheticMic(mic_audio()))
        try:
            await caller.connect(http, str(server.make_url("/v1/realtime/calls")))
            assert caller.location.startswith("/v1/realtime/calls/rtc_")
            created = await caller.next("session.created")
            assert created["session"]["type"] == "realtime"
            (call,) = server.app[CALLS_KEY].values()
            (receiver,) = call.pc.getReceivers()
            assert isinstance(receive_buffer(receiver), ArrivalBuffer)
            started = await caller.next("input_audio_buffer.speech_started")
            transcript = await caller.next("conversation.item.input_audio_transcription.completed")
            assert transcript["item_id"] == started["item_id"]
            assert transcript["transcript"].startswith("w0")  # the tone survived Opus both ways
            assert receive_buffer(receiver).released > 25  # the speech (≥ 0.5 s) came through our buffer
            response = await caller.next("response.created")
            loud_before = caller.loud_frames
            done = await caller.next("response.done")
            assert done["response"]["id"] == response["response"]["id"]
            assert done["response"]["status"] == "completed"
            # the reply was heard on the media track (≥ 0.2 s of it), not sent as deltas
            await wait_until(lambda: caller.loud_frames - loud_before >= 10, what="reply audio")
            types = {e["type"] for e in caller.events}
            assert "response.output_audio.delta" not in types
            assert {"response.output_audio_transcript.delta", "step.state"} <= types
            # the same client events work over the data channel
            caller.send({"type": "session.update", "session": {"type": "realtime", "instructions": "Short."}})
            assert (await caller.next("session.updated"))["session"]["instructions"] == "Short."
            caller.send({"type": "bogus"})
            assert (await caller.next("error"))["error"]["code"] == "unknown_event"
            async with http.post(server.make_url(caller.location + "/hangup")) as r:
                assert r.status == 200
            await wait_until(lambda: not server_context(server).sessions, what="call cleanup")
        finally:
            await caller.close()


async def test_openai_sdk_calls_create_multipart() -> None:
    """The SDK's calls.create sends multipart/form-data (sdp + session JSON); it must work too."""
    async with running_server(fake_config()) as server:
        caller = Caller(SyntheticMic(mic_audio(0.0, 0.0)))
        try:
            async with AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk-test") as client:
                answer = await client.realtime.calls.create(
                    sdp=await caller.offer(), session={"type": "realtime", "instructions": "From the SDK."})
            await caller.answer(answer.text)
            await caller.next("session.created")
            assert (await caller.next("session.updated"))["session"]["instructions"] == "From the SDK."
            assert next(iter(server_context(server).sessions)).context.system_prompt == "From the SDK."
        finally:
            await caller.close()
        await wait_until(lambda: not server_context(server).sessions, what="cleanup after the peer left")
