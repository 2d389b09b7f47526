"""Test doubles shared by controller tests: a scripted caller and an audio output we control."""
from __future__ import annotations

import asyncio

import numpy as np

from decoder.base import AudioChunk

FRAME = 320
LOUD = (8000 * np.sin(2 * np.pi * 200 * np.arange(FRAME) / 16000)).astype(np.int16)
QUIET = np.zeros(FRAME, dtype=np.int16)


class FakeOutput:
    """Records what the controller plays. Playback advances only when the test says so
    (`play_all()` / `played = x`), so barge-in positions are exact."""

    def __init__(self, auto_play: bool = True) -> None:
        self.auto_play = auto_play
        self.chunks: list[AudioChunk] = []
        self.replies: list[str] = []
        self.cleared = 0
        self.played = 0.0
        self._drained = asyncio.Event()

    def begin_reply(self, response_id: str, item_id: str) -> None:
        self.replies.append(response_id)
        self.played = 0.0

    def write(self, chunk: AudioChunk) -> None:
        self.chunks.append(chunk)
        self._drained.clear()
        if self.auto_play:
            self.played += chunk.seconds
            self._drained.set()

    def clear(self) -> None:
        self.cleared += 1
        self._drained.set()

    def played_seconds(self) -> float:
        return self.played

    def finish_playing(self) -> None:
        self.played = sum(c.seconds for c in self.chunks)
        self._drained.set()

    async def drain(self) -> None:
        if self.auto_play:
            return
        await self._drained.wait()


async def frames(ctrl, frame: np.ndarray, ms: int) -> None:
    """Feed `ms` of one frame kind, yielding to the loop between frames like a live caller."""
    for _ in range(ms // 20):
        ctrl.push_audio(frame)
        await asyncio.sleep(0)


async def wait_until(cond, timeout: float = 10.0) -> None:
    """Synchronise with background work (not a timing assertion: the bound is generous)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)
