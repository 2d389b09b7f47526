"""WebRTC end to end: an aiortc caller posts its offer, speaks, hears the reply on the remote track
and gets the Realtime events on the oai-events data channel (fake stages, loopback only)."""
from __future__ import annotations

import aiohttp
from openai import AsyncOpenAI

from realtime.webrtc import CALLS_KEY, RECEIVE_PREFETCH, receive_prefetch
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
            assert [receive_prefetch(r) for r in call.pc.getReceivers()] == [RECEIVE_PREFETCH]
            started = await caller.next("input_audio_buffer.speech_started")
            transcript = await caller.next("conversation.item.input_audio_transcription.completed")
            assert transcript["item_id"] == started["item_id"]
            assert transcript["transcript"].startswith("w0")  # the tone survived Opus both ways
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


def test_the_lean_receive_buffer_releases_each_packet_when_the_next_arrives() -> None:
    """What RECEIVE_PREFETCH buys: aiortc's audio default (prefetch 4) hands out a 20 ms packet only
    once 4 more have arrived (80 ms); ours, once the next one has (20 ms). Order is kept."""
    from aiortc.jitterbuffer import JitterBuffer
    from aiortc.rtp import RtpPacket

    def arrivals_until_first_release(buffer: JitterBuffer) -> int:
        for n in range(16):
            packet = RtpPacket(payload_type=111, sequence_number=100 + n, timestamp=960 * n, payload=bytes([n]))
            packet._data = packet.payload  # what the receiver sets (the depacketized payload)
            _, frame = buffer.add(packet)
            if frame is not None:
                assert frame.timestamp == 0  # the oldest packet first
                return n + 1
        raise AssertionError("nothing released")

    assert arrivals_until_first_release(JitterBuffer(capacity=16, prefetch=4)) == 5
    assert arrivals_until_first_release(JitterBuffer(capacity=16, prefetch=RECEIVE_PREFETCH)) == 2
