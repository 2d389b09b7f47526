"""An aiortc caller for the WebRTC tests: a synthetic microphone, the oai-events channel, and a
reader that measures the reply audio it hears. Loopback candidates only (see realtime/webrtc.py)."""
from __future__ import annotations

import asyncio
import fractions
import json
import time

import aiohttp
import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from realtime.webrtc import use_loopback_candidates
from tests.realtime_util import WAIT

RATE = 48_000
FRAME = 960


def mic_audio(speech_s: float = 1.0, lead_s: float = 0.3) -> np.ndarray:
    """Silence, a loud tone (speech to the energy VAD), then silence (the track keeps going)."""
    t = np.arange(int(speech_s * RATE)) / RATE
    tone = (8000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    return np.concatenate([np.zeros(int(lead_s * RATE), np.int16), tone])


class SyntheticMic(MediaStreamTrack):
    """Plays `pcm` in real time, then silence; say() queues more."""

    kind = "audio"

    def __init__(self, pcm: np.ndarray) -> None:
        super().__init__()
        self.pcm = pcm
        self._start: float | None = None
        self._pts = 0

    def say(self, pcm: np.ndarray) -> None:
        self.pcm = np.concatenate([self.pcm, pcm])

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += FRAME
            await asyncio.sleep(max(0.0, self._start + self._pts / RATE - time.monotonic()))
        part, self.pcm = self.pcm[:FRAME], self.pcm[FRAME:]
        if len(part) < FRAME:
            part = np.concatenate([part, np.zeros(FRAME - len(part), np.int16)])
        frame = av.AudioFrame.from_ndarray(part.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, self._pts, fractions.Fraction(1, RATE)
        return frame


class Caller:
    def __init__(self, mic: SyntheticMic) -> None:
        use_loopback_candidates()
        self.pc = RTCPeerConnection()
        self.mic = mic
        self.events: list[dict] = []
        self.loud_frames = 0  # received 20 ms frames with audible reply audio
        self.frames = 0
        self.channel = self.pc.createDataChannel("oai-events")
        self.channel.on("message", lambda m: self.events.append(json.loads(m)))
        self.pc.addTrack(mic)
        self._reader: asyncio.Task | None = None
        self.pc.on("track", self._on_track)
        self.location: str | None = None

    def _on_track(self, track) -> None:
        self._reader = asyncio.create_task(self._read(track))

    async def _read(self, track) -> None:
        try:
            while True:
                frame = await track.recv()
                pcm = frame.to_ndarray().astype(np.float64)
                self.frames += 1
                if np.sqrt(np.mean(pcm ** 2)) > 300:
                    self.loud_frames += 1
        except MediaStreamError:
            pass

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def connect(self, http: aiohttp.ClientSession, url: str) -> None:
        async with http.post(url, data=await self.offer(), headers={"Content-Type": "application/sdp"}) as r:
            assert r.status == 201, await r.text()
            assert r.content_type == "application/sdp"
            self.location = r.headers["Location"]
            answer = await r.text()
        await self.answer(answer)

    async def answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def next(self, type_: str, after: int = 0, timeout: float = WAIT) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events[after:]:
                if e["type"] == type_:
                    return e
            if time.monotonic() > deadline:
                raise AssertionError(f"no {type_} event; got {[e['type'] for e in self.events]}")
            await asyncio.sleep(0.02)

    def send(self, event: dict) -> None:
        self.channel.send(json.dumps(event))

    async def close(self) -> None:
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
