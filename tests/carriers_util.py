"""Synthetic callers for the carrier adapters (tests/test_telephony_carriers.py): Telnyx and Vonage
over a real aiohttp WebSocket, Asterisk AudioSocket over real TCP. Each keeps the agent's audio it
received (with arrival times) and every control message, and can speak and press keys."""
from __future__ import annotations

import asyncio
import base64
import json
import struct
import uuid
from contextlib import asynccontextmanager

import aiohttp
import numpy as np

from realtime import g711
from realtime.telephony.audiosocket import LISTENER_KEY
from tests.realtime_util import WAIT

STREAM_ID = "32DE0DEA-53CB-4B21-89A4-9E1819C043BC"
TELNYX_START = {"event": "start", "sequence_number": "1", "stream_id": STREAM_ID,
                "start": {"call_control_id": "v3:call-1", "from": "+13122010094", "to": "+13122123456",
                          "custom_parameters": {"customer_id": "customer_123"},
                          "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}}}
VONAGE_CONNECTED = {"event": "websocket:connected", "content-type": "audio/l16;rate=16000",
                    "caller_name": "Ada"}


class FakeCaller:
    """What every synthetic caller shares: audio received, controls received, a close reason."""

    rate = 8000

    def __init__(self) -> None:
        self.audio: list[tuple[float, np.ndarray]] = []  # (arrival on the loop clock, int16 at `rate`)
        self.controls: list[dict] = []
        self.closed_with: str | None = None
        self._new = asyncio.Condition()

    async def _got(self, audio: np.ndarray | None = None, control: dict | None = None) -> None:
        async with self._new:
            if audio is not None:
                self.audio.append((asyncio.get_running_loop().time(), audio))
            if control is not None:
                self.controls.append(control)
            self._new.notify_all()

    async def wait(self, predicate, what: str, timeout: float = WAIT) -> None:
        async def check() -> None:
            async with self._new:
                while not predicate():
                    await self._new.wait()
        try:
            await asyncio.wait_for(check(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None

    async def speak(self, pcm: np.ndarray, realtime: bool = False) -> float:
        """int16 at `rate`, in 20 ms frames, as fast as possible or paced like a live call.
        Returns when (loop clock) its first frame went."""
        step = self.rate // 50
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i in range(0, len(pcm) - step + 1, step):
            if realtime:
                await asyncio.sleep(max(0.0, t0 + i / self.rate - loop.time()))
            await self.send_audio(pcm[i:i + step])
        return t0

    async def send_audio(self, frame: np.ndarray) -> None:
        raise NotImplementedError

    async def press(self, digit: str) -> None:
        raise NotImplementedError


class WsCaller(FakeCaller):
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        super().__init__()
        self.ws = ws
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            msg = await self.ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                self.closed_with = msg.extra or ""
                await self._got()
                return
            if msg.type == aiohttp.WSMsgType.BINARY:
                await self._got(audio=np.frombuffer(msg.data, dtype="<i2").astype(np.int16))
            elif msg.type == aiohttp.WSMsgType.TEXT:
                await self.on_text(json.loads(msg.data))

    async def on_text(self, data: dict) -> None:
        await self._got(control=data)

    async def send(self, data: dict | bytes | str) -> None:
        """A dict as JSON text, bytes as a binary frame, a str as it is (malformed on purpose)."""
        if self.ws.closed:
            return
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data if isinstance(data, str) else json.dumps(data))

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


class FakeTelnyx(WsCaller):
    async def on_text(self, data: dict) -> None:
        if data.get("event") == "media":
            await self._got(audio=g711.decode(base64.b64decode(data["media"]["payload"]), g711.MULAW))
        else:
            await self._got(control=data)

    async def send_audio(self, frame: np.ndarray) -> None:
        await self.send({"event": "media", "stream_id": STREAM_ID, "media": {
            "track": "inbound", "payload": base64.b64encode(g711.encode(frame, g711.MULAW)).decode()}})

    async def press(self, digit: str) -> None:
        await self.send({"event": "dtmf", "stream_id": STREAM_ID, "dtmf": {"digit": digit}})


class FakeVonage(WsCaller):
    rate = 16_000

    async def send_audio(self, frame: np.ndarray) -> None:
        await self.send(frame.astype("<i2").tobytes())

    async def press(self, digit: str) -> None:
        await self.send({"event": "websocket:dtmf", "digit": digit, "duration": 260})


class FakeAsterisk(FakeCaller):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__()
        self.reader, self.writer = reader, writer
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                kind, length = struct.unpack(">BH", await self.reader.readexactly(3))
                payload = await self.reader.readexactly(length) if length else b""
                if kind == 0x10:
                    await self._got(audio=np.frombuffer(payload, dtype="<i2").astype(np.int16))
                else:
                    await self._got(control={"kind": kind, "payload": payload})
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_with = ""
            await self._got()

    async def send_raw(self, kind: int, payload: bytes = b"") -> None:
        self.writer.write(struct.pack(">BH", kind, len(payload)) + payload)
        await self.writer.drain()

    async def send_audio(self, frame: np.ndarray) -> None:
        await self.send_raw(0x10, frame.astype("<i2").tobytes())

    async def press(self, digit: str) -> None:
        await self.send_raw(0x03, digit.encode())

    async def close(self) -> None:
        self.writer.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


@asynccontextmanager
async def telnyx_call(server, start: bool = True):
    async with aiohttp.ClientSession() as http:
        call = FakeTelnyx(await http.ws_connect(server.make_url("/v1/telephony/telnyx")))
        try:
            await call.send({"event": "connected", "version": "1.0.0"})
            if start:
                await call.send(TELNYX_START)
            yield call
        finally:
            await call.close()


@asynccontextmanager
async def vonage_call(server, start: bool = True):
    async with aiohttp.ClientSession() as http:
        call = FakeVonage(await http.ws_connect(server.make_url("/v1/telephony/vonage")))
        try:
            if start:
                await call.send(VONAGE_CONNECTED)
            yield call
        finally:
            await call.close()


@asynccontextmanager
async def asterisk_call(server, start: bool = True):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.app[LISTENER_KEY].port)
    call = FakeAsterisk(reader, writer)
    try:
        if start:
            await call.send_raw(0x01, uuid.UUID("40325ec2-5efd-4bd3-805f-53576e581d13").bytes)
        yield call
    finally:
        await call.close()


CALLERS = {"telnyx": telnyx_call, "vonage": vonage_call, "audiosocket": asterisk_call}
