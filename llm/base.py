"""The LLM stage's interface.

stream() returns an async iterator of text pieces, and — when the request offered `tools` and the
model calls one — ToolCallDelta pieces (a call's name first, then its JSON arguments in parts).
Closing it early (aclose(), or cancelling the task that iterates it) must close the HTTP stream,
so the server stops generating: that is what makes a discarded speculation free.

`max_tokens` (a client's Realtime `max_output_tokens`) lowers the stage's own limit for one reply,
never raises it. A stream that the server ended at the request's max_tokens (finish_reason "length") ends with a
ReplyCut piece: the text stops mid-thought, and the reply should not speak its unfinished sentence.

warm() is called when the user starts a turn, with the conversation so far: a server with a
prompt cache (llama.cpp, vLLM's prefix caching) then holds that prefix when the turn's prompt
arrives, and only the user's new words are left to evaluate at the pause. Best effort: it never
raises, and a client without a cache may do nothing.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True)
class ToolCall:
    """A function call the model made: `arguments` is the JSON text it wrote."""
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a streamed tool call. `index` tells the calls of one reply apart; `call_id` and
    `name` come with a call's first piece (empty later), `arguments` is the next part of its JSON."""
    index: int
    call_id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True)
class ReplyCut:
    """The last piece of a stream the server cut at max_tokens: the text before it is unfinished."""


@dataclass(frozen=True)
class Message:
    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant message that called functions
    tool_call_id: str = ""  # a tool message: the call it answers


def chat_message(message: Message) -> dict[str, Any]:
    """The OpenAI chat-completions form of a message (what chat templates with tools expect)."""
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [{"id": c.call_id, "type": "function",
                              "function": {"name": c.name, "arguments": c.arguments}} for c in message.tool_calls]
    return out


class LLMClient(Protocol):
    def stream(self, messages: Sequence[Message], tools: Sequence[dict] | None = None,
               tool_choice: str | dict | None = None, max_tokens: int | None = None
               ) -> AsyncIterator[str | ToolCallDelta | ReplyCut]: ...

    async def warm(self, history: Sequence[Message]) -> None: ...
