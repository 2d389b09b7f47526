"""A caller over WebRTC (aiortc), as a browser would call: SDP offer POSTed to
/v1/realtime/calls, Opus both ways, Realtime JSON events on the "oai-events" data channel.

Sent audio: a MediaStreamTrack that plays the mic (48 kHz mono, 20 ms frames, paced in real
time). Received audio: every frame the remote track yields, timestamped as it comes out of
aiortc's receive path — i.e. after its jitter buffer (~80 ms) and the Opus decoder, the point
where a player would get it.
"""
from __future__ import annotations

import asyncio
import fractions
import json
import time

import aiohttp
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from bench import impair
from bench.corpus import Conversation
from bench.measure import REFUSED_STATUS, Playout, Refused, TurnTiming, auth_headers, http_refusal, refusal_reason
from bench.mic import Mic, ScriptOptions, talk

SR = 48_000


class MicTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, mic: Mic) -> None:
        super().__init__()
        self.mic = mic
        self._pts = 0

    async def recv(self) -> AudioFrame:
        pcm = await self.mic.next_frame()
        frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.mic.sr
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, self.mic.sr)
        self._pts += len(pcm)
        return frame


def frame_pcm(frame: AudioFrame) -> np.ndarray:
    """An aiortc audio frame as (samples, channels) int16."""
    arr = frame.to_ndarray()
    channels = len(frame.layout.channels)
    return arr.T if frame.format.is_planar else arr.reshape(-1, channels)


async def connect(base_url: str, track: MediaStreamTrack, http: aiohttp.ClientSession,
                  on_event, on_audio) -> tuple[RTCPeerConnection, list[asyncio.Task]]:
    """Offer, POST, answer; on_audio(frame, t) for each received frame, on_event(t, dict).
    Returns the connection and the task(s) pulling received audio (for close())."""
    pc = RTCPeerConnection()
    pc.addTrack(track)
    channel = pc.createDataChannel("oai-events")
    pulls: list[asyncio.Task] = []

    @channel.on("message")
    def _message(data) -> None:
        t = time.monotonic()
        try:
            on_event(t, json.loads(data))
        except (ValueError, TypeError):
            pass

    @pc.on("track")
    def _track(remote) -> None:
        async def pull() -> None:
            try:
                while True:
                    frame = await remote.recv()
                    on_audio(frame, time.monotonic())
            except MediaStreamError:
                pass
        pulls.append(asyncio.ensure_future(pull()))

    await pc.setLocalDescription(await pc.createOffer())
    if (impairment := impair.from_env()) is not None:  # loss and jitter without netem (bench/impair.py)
        impairment.apply(pc)
    url = base_url.rstrip("/") + "/v1/realtime/calls"
    headers = {"Content-Type": "application/sdp", **auth_headers()}
    async with http.post(url, data=pc.localDescription.sdp, headers=headers) as resp:
        answer = await resp.text()
        if resp.status in REFUSED_STATUS:
            await pc.close()
            raise http_refusal(resp.status, "POST /v1/realtime/calls", resp.headers, answer)
        if resp.status not in (200, 201):
            await pc.close()
            raise ConnectionError(f"POST /v1/realtime/calls: HTTP {resp.status}: {answer[:200]}")
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    return pc, pulls


async def close(pc: RTCPeerConnection, pulls: list[asyncio.Task]) -> None:
    for task in pulls:
        task.cancel()
    await pc.close()
    await asyncio.gather(*pulls, return_exceptions=True)


async def call(base_url: str, conv: Conversation, opts: ScriptOptions, max_turns: int | None = None,
               seed: int = 0, progress=None) -> tuple[list[TurnTiming], Playout, list[tuple[float, dict]]]:
    """One conversation. Raises Refused if the server refuses the call (HTTP 503/429 on the
    offer, or a refusal `error` event on the data channel, which ends the call at once)."""
    heard, events, mic, timings = Playout(), [], Mic(SR), []
    loop = asyncio.get_running_loop()
    refused: asyncio.Future = loop.create_future()

    def on_event(t: float, event: dict) -> None:
        events.append((t, event))
        if (reason := refusal_reason(event)) is not None and not refused.done():
            refused.set_result(Refused(reason, timings, heard, events, t))

    def on_audio(frame: AudioFrame, t: float) -> None:
        heard.add(frame_pcm(frame), frame.sample_rate, t)

    async with aiohttp.ClientSession() as http:
        pc, pulls = await connect(base_url, MicTrack(mic), http, on_event, on_audio)
        script = asyncio.create_task(talk(conv, mic, heard, opts, max_turns, seed, progress, timings))
        try:
            await asyncio.wait([script, refused], return_when=asyncio.FIRST_COMPLETED)
            if not script.done():
                raise refused.result()
            script.result()
        finally:
            script.cancel()
            await asyncio.gather(script, return_exceptions=True)
            refused.cancel()
            await close(pc, pulls)
    return timings, heard, events
