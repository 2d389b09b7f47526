"""A deterministic tokenizer for tests: one word per 200 ms of loud audio pushed.

More speech → a longer transcript, so a speculation made before the user resumed differs from
the final input, exactly as with a real ASR.
"""
from __future__ import annotations

import asyncio

import numpy as np

from streaming_tokenizer.base import UserInput

FRAME_S = 0.02
FAKE_LANGUAGES = {"en", "zh", "ja", "ko", "fr", "de", "es"}


class FakeTokenizer:
    def __init__(self, delay_s: float = 0.0, threshold_dbfs: float = -40.0) -> None:
        self.delay_s = delay_s
        self._threshold = 10 ** (threshold_dbfs / 20) * 32768
        self.voiced_frames = 0
        self.frames = 0
        self.finalize_calls = 0
        self.language: str | None = None

    def set_language(self, language: str | None) -> None:
        if language is not None and language not in FAKE_LANGUAGES:
            raise ValueError(f"the fake tokenizer knows no language {language!r}")
        self.language = language

    def push(self, frame: np.ndarray) -> None:
        self.frames += 1
        if np.sqrt(np.mean(frame.astype(np.float64) ** 2)) > self._threshold:
            self.voiced_frames += 1

    async def finalize(self) -> UserInput:
        self.finalize_calls += 1
        voiced = self.voiced_frames  # snapshot: frames pushed while we "transcribe" don't count
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        words = " ".join(f"w{i}" for i in range(voiced // 10))
        return UserInput(text=words, speech_seconds=voiced * FRAME_S, language=self.language)

    def reset(self) -> None:
        self.voiced_frames = 0
        self.frames = 0


class FakeTokenizerFactory:
    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.created: list[FakeTokenizer] = []

    def create(self) -> FakeTokenizer:
        tok = FakeTokenizer(self.delay_s)
        self.created.append(tok)
        return tok


def build(options: dict, env) -> FakeTokenizerFactory:
    return FakeTokenizerFactory(float(options.get("delay_s", 0.0)))
