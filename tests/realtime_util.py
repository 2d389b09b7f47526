"""Helpers for the realtime/ tests: a fake-stage server on 127.0.0.1 and a scripted Realtime client."""
from __future__ import annotations

import asyncio
import base64
import json
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp.test_utils import TestServer

from realtime.app import create_app
from realtime.config import Config, load_config
from realtime.ws import SERVER_KEY

REPO = Path(__file__).resolve().parents[1]
FAKE_CONFIG = REPO / "configs" / "fake.yaml"
WAIT = 30.0  # generous: a slow shared machine must not fail a test by timing


def fake_config(**overrides: Any) -> Config:
    return load_config(FAKE_CONFIG, overrides)


def tone(seconds: float, rate: int = 24_000, freq: float = 300.0, amplitude: int = 8000) -> np.ndarray:
    """Loud enough for the energy VAD (-40 dBFS) and the fake tokenizer: it counts as speech."""
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def silence(seconds: float, rate: int = 24_000) -> np.ndarray:
    return np.zeros(int(seconds * rate), dtype=np.int16)


def b64(pcm: np.ndarray) -> str:
    return base64.b64encode(pcm.astype("<i2").tobytes()).decode()


def utterance(speech_s: float = 1.0, silence_s: float = 1.2, rate: int = 24_000) -> np.ndarray:
    """One user turn: speech, then enough silence for the end of turn (650 ms by default)."""
    return np.concatenate([tone(speech_s, rate), silence(silence_s, rate)])


def append_events(pcm: np.ndarray, chunk_s: float = 0.1, rate: int = 24_000) -> list[dict]:
    step = int(chunk_s * rate)
    return [{"type": "input_audio_buffer.append", "audio": b64(pcm[i:i + step])} for i in range(0, len(pcm), step)]


@asynccontextmanager
async def running_server(config: Config | None = None):
    server = TestServer(create_app(config or fake_config()), host="127.0.0.1", port=None)
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


def server_context(server: TestServer):
    return server.app[SERVER_KEY]


class WsClient:
    """A Realtime WebSocket client that keeps every event it received, in order."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: list[dict] = []
        self._cursor: dict[str, int] = {}  # per type: index after the last event consumed
        self._new = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                async with self._new:
                    self.events.append(json.loads(msg.data))
                    self._new.notify_all()

    async def send(self, event: dict) -> None:
        await self.ws.send_str(json.dumps(event))

    async def send_audio(self, pcm: np.ndarray, chunk_s: float = 0.1) -> None:
        for event in append_events(pcm, chunk_s):
            await self.send(event)

    async def next(self, type_: str, timeout: float = WAIT, **match: Any) -> dict:
        """The next event of this type (and these field values) not consumed by an earlier next()."""
        async def find() -> dict:
            async with self._new:
                while True:
                    for i in range(self._cursor.get(type_, 0), len(self.events)):
                        e = self.events[i]
                        if e["type"] == type_ and all(e.get(k) == v for k, v in match.items()):
                            self._cursor[type_] = i + 1
                            return e
                    await self._new.wait()
        return await asyncio.wait_for(find(), timeout)

    def index(self, event: dict) -> int:
        return next(i for i, e in enumerate(self.events) if e is event)

    def of_type(self, type_: str) -> list[dict]:
        return [e for e in self.events if e["type"] == type_]

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


@asynccontextmanager
async def ws_client(server: TestServer, **kwargs: Any):
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.make_url("/v1/realtime?model=step-realtime"), **kwargs)
        client = WsClient(ws)
        try:
            await client.next("session.created")
            yield client
        finally:
            await client.close()


async def wait_until(predicate, timeout: float = WAIT, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
