"""A Twilio Media Streams peer for the telephony tests (tests/test_telephony.py)."""
from __future__ import annotations

import asyncio
import base64
import json
from contextlib import asynccontextmanager

import aiohttp
import numpy as np

from realtime import g711
from tests.realtime_util import WAIT, server_context, silence, tone

ROUTE = "/v1/telephony/twilio"
SID = "MZ0123456789abcdef"
START = {"event": "start", "sequenceNumber": "1", "streamSid": SID,
         "start": {"accountSid": "AC1", "streamSid": SID, "callSid": "CA1", "tracks": ["inbound"],
                   "customParameters": {},
                   "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}


class FakeTwilio:
    """Twilio's side of a Media Stream: sends the caller's audio as 20 ms μ-law `media`, plays our
    media in real time and echoes each of our marks once the audio before it has played; on
    `clear` it drops what it holds and echoes the pending marks at once (as Twilio documents)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, echo_marks: bool = True) -> None:
        self.ws = ws
        self.echo_marks = echo_marks
        self.received: list[dict] = []
        self.close_reason: str | None = None
        self._new = asyncio.Condition()
        self._play_end = 0.0
        self._pending: list[tuple[asyncio.TimerHandle, str]] = []
        self._seq = 1
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            msg = await self.ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                self.close_reason = msg.extra
                return
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            now = loop.time()
            if data["event"] == "media":
                self._play_end = max(self._play_end, now) + len(base64.b64decode(data["media"]["payload"])) / 8000
            elif data["event"] == "mark" and self.echo_marks:
                handle = loop.call_at(self._play_end, self._echo, data["mark"]["name"])
                self._pending.append((handle, data["mark"]["name"]))
            elif data["event"] == "clear":
                for handle, name in self._pending:
                    handle.cancel()
                    self._echo(name)
                self._play_end = now
            async with self._new:
                self.received.append(data)
                self._new.notify_all()

    def _echo(self, name: str) -> None:
        self._pending = [(h, n) for h, n in self._pending if n != name]
        asyncio.ensure_future(self.send({"event": "mark", "streamSid": SID, "mark": {"name": name}}))

    async def send(self, event: dict) -> None:
        self._seq += 1
        if not self.ws.closed:
            await self.ws.send_str(json.dumps({"sequenceNumber": str(self._seq), **event}))

    async def speak(self, pcm: np.ndarray, realtime: bool = False) -> None:
        """8 kHz int16 → 20 ms μ-law media; as fast as possible, or paced like a live call."""
        payload = g711.encode(pcm, g711.MULAW)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i in range(0, len(payload), 160):
            if realtime:
                await asyncio.sleep(max(0.0, t0 + i / 8000 - loop.time()))
            await self.send({"event": "media", "streamSid": SID, "media": {
                "track": "inbound", "chunk": str(i // 160 + 1), "timestamp": str(i // 8),
                "payload": base64.b64encode(payload[i:i + 160]).decode()}})

    async def wait_for(self, predicate, what: str, timeout: float = WAIT) -> dict:
        """The first received message (in order) for which predicate is true."""
        async def find() -> dict:
            async with self._new:
                while True:
                    for msg in self.received:
                        if predicate(msg):
                            return msg
                    await self._new.wait()
        try:
            return await asyncio.wait_for(find(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None

    def of(self, event: str) -> list[dict]:
        return [m for m in self.received if m["event"] == event]

    async def close(self) -> None:
        for handle, _ in self._pending:
            handle.cancel()
        await self.ws.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


@asynccontextmanager
async def twilio_call(server, start: bool = True, **kwargs):
    async with aiohttp.ClientSession() as http:
        call = FakeTwilio(await http.ws_connect(server.make_url(ROUTE)), **kwargs)
        try:
            await call.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
            if start:
                await call.send(START)
            yield call
        finally:
            await call.close()


def utterance_8k(speech_s: float = 1.0) -> np.ndarray:
    return np.concatenate([tone(speech_s, 8000), silence(1.2, 8000)])


def assistant_turns(server) -> list:
    return [t for s in server_context(server).sessions for t in s.context.turns if t.role == "assistant"]


def reply_audio(call: FakeTwilio, response_id: str) -> np.ndarray:
    """The μ-law media of one reply, decoded (a mark named <response_id>.<n> follows each chunk's media)."""
    payloads, run = [], []
    for msg in call.received:
        if msg["event"] == "media":
            run.append(base64.b64decode(msg["media"]["payload"]))
        elif msg["event"] == "mark":
            if msg["mark"]["name"].startswith(response_id + "."):
                payloads += run
            run = []
    return g711.decode(b"".join(payloads), g711.MULAW).astype(float)
