"""A decoder for tests: a quiet tone per clause, its length proportional to the clause's text.

`sound: speech_like` gives speech-like audio instead (decoder/speech_like.py), seeded by the
clause: what an echo canceller can work with, where a tone defeats it.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np

from decoder.base import AudioChunk
from decoder.clauses import clauses
from decoder.speech_like import speech_like


class FakeDecoder:
    def __init__(self, sample_rate: int = 16_000, seconds_per_char: float = 0.02, delay_s: float = 0.0,
                 chunk_s: float = 0.2, sound: str = "tone") -> None:
        if sound not in ("tone", "speech_like"):
            raise ValueError(f"decoder: sound must be 'tone' or 'speech_like', not {sound!r}")
        self.sound = sound
        self.sample_rate = sample_rate
        self.seconds_per_char = seconds_per_char
        self.delay_s = delay_s
        self.chunk_s = chunk_s
        self.clauses_done: list[str] = []
        self.cancelled = 0

    async def synthesize(self, text: AsyncIterator[str]) -> AsyncIterator[AudioChunk]:
        try:
            async for clause in clauses(text):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                pcm = self._sound(clause)
                n = len(pcm)
                step = int(self.chunk_s * self.sample_rate)
                for i in range(0, n, step):  # several chunks per clause, text on the first
                    yield AudioChunk(pcm[i:i + step], self.sample_rate, clause if i == 0 else "")
                self.clauses_done.append(clause)
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise
        finally:
            await text.aclose()  # type: ignore[attr-defined]

    def _sound(self, clause: str) -> np.ndarray:
        seconds = len(clause) * self.seconds_per_char
        if self.sound == "speech_like":
            return speech_like(seconds, self.sample_rate, seed=clause)
        t = np.arange(int(seconds * self.sample_rate)) / self.sample_rate
        return (3000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)


def build(options: dict, env) -> FakeDecoder:
    return FakeDecoder(**options)
