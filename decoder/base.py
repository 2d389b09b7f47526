"""The decoder stage's interface.

synthesize() takes the LLM's text as it streams and yields audio as soon as a clause is
complete, so the first audio leaves before the reply is written. Each chunk carries the text it
speaks, so the context can be truncated to what the caller actually heard after a barge-in.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class AudioChunk:
    pcm: np.ndarray  # int16 mono
    sample_rate: int
    text: str = ""  # the text this chunk speaks ("" for a continuation of the previous span)

    @property
    def seconds(self) -> float:
        return len(self.pcm) / self.sample_rate


class Decoder(Protocol):
    """Shared per server (holds the model); synthesize() is per reply and cancellable."""

    sample_rate: int

    def synthesize(self, text: AsyncIterator[str]) -> AsyncIterator[AudioChunk]: ...
