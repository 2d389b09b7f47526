"""The LLM stage's interface.

stream() returns an async iterator of text pieces. Closing it early (aclose(), or cancelling
the task that iterates it) must close the HTTP stream, so the server stops generating: that is
what makes a discarded speculation free.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


class LLMClient(Protocol):
    def stream(self, messages: Sequence[Message]) -> AsyncIterator[str]: ...
