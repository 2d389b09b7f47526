"""A decoder for tests: a quiet tone per clause, its length proportional to the clause's text."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np

from decoder.base import AudioChunk
from decoder.clauses import clauses


class FakeDecoder:
    def __init__(self, sample_rate: int = 16_000, seconds_per_char: float = 0.02, delay_s: float = 0.0,
                 chunk_s: float = 0.2) -> None:
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
                n = int(len(clause) * self.seconds_per_char * self.sample_rate)
                t = np.arange(n) / self.sample_rate
                pcm = (3000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)
                step = int(self.chunk_s * self.sample_rate)
                for i in range(0, n, step):  # several chunks per clause, text on the first
                    yield AudioChunk(pcm[i:i + step], self.sample_rate, clause if i == 0 else "")
                self.clauses_done.append(clause)
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise
        finally:
            await text.aclose()  # type: ignore[attr-defined]


def build(options: dict, env) -> FakeDecoder:
    return FakeDecoder(**options)
