"""The streaming tokenizer's interface.

push() is called for every 20 ms frame while the user speaks (cheap: it only buffers or
feeds a streaming encoder). finalize() is called at each pause and at the end of the turn;
it must be cheap to call again after more audio, reusing what was already done.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

import numpy as np

_WORDS = re.compile(r"[\w']+", re.UNICODE)


@dataclass(frozen=True)
class UserInput:
    """What the LLM gets for one user turn."""

    text: str  # transcript (may be "" for the step-audio stack when ASR is off)
    audio_tokens: tuple[int, ...] = ()  # Step-Audio <audio_N> numbers N, interleaved 2+3
    speech_seconds: float = 0.0
    language: str | None = None

    def prompt_text(self) -> str:
        """What goes into the LLM prompt for this turn: audio tokens if there are any, else text."""
        if self.audio_tokens:
            return "".join(f"<audio_{n}>" for n in self.audio_tokens)
        return self.text

    def same_as(self, other: "UserInput") -> bool:
        """Would the LLM see the same input? Speculation is committed only when it would."""
        if self.audio_tokens or other.audio_tokens:
            return self.audio_tokens == other.audio_tokens
        return _normalize(self.text) == _normalize(other.text)


def _normalize(text: str) -> list[str]:
    return [w.lower() for w in _WORDS.findall(text)]


class StreamingTokenizer(Protocol):
    """Per-session. push() frames of 16 kHz int16 mono; finalize() what was said so far."""

    def push(self, frame: np.ndarray) -> None: ...

    async def finalize(self) -> UserInput: ...

    def reset(self) -> None: ...


class LanguageHint(Protocol):
    """Optional: a tokenizer that can be told the caller's language (the Realtime API's
    `audio.input.transcription.language`). None: back to the server's configured behaviour."""

    def set_language(self, language: str | None) -> None:
        """Raises ValueError for a language the model does not know."""


class TokenizerFactory(Protocol):
    def create(self) -> StreamingTokenizer: ...
