"""The LLM stage's interface.

stream() returns an async iterator of text pieces. Closing it early (aclose(), or cancelling
the task that iterates it) must close the HTTP stream, so the server stops generating: that is
what makes a discarded speculation free.

warm() is called when the user starts a turn, with the conversation so far: a server with a
prompt cache (llama.cpp, vLLM's prefix caching) then holds that prefix when the turn's prompt
arrives, and only the user's new words are left to evaluate at the pause. Best effort: it never
raises, and a client without a cache may do nothing.
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

    async def warm(self, history: Sequence[Message]) -> None: ...
