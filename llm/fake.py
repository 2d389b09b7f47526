"""A scripted LLM for tests. It records every stream it opened and whether it was closed
before it finished, so tests can assert that a discarded speculation really stopped the LLM.

With `tool_call` set ({name, arguments}) and tools offered, it answers a user message by calling
that tool (arguments streamed in a few pieces, after `tool_preamble` text if any), and a tool
result by saying it: "The tool said: <output>."
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from core.scheduler import Ticket, ticket_now
from llm.base import Message, ReplyCut, ToolCallDelta


@dataclass
class StreamRecord:
    messages: list[Message]
    pieces_sent: int = 0
    finished: bool = False  # ran to the end
    closed_early: bool = False  # closed (cancelled) before the end
    ticket: Ticket | None = None  # what the scheduler was told this work is for
    tools: list[dict] = field(default_factory=list)
    tool_choice: str | dict | None = None
    max_tokens: int | None = None  # the request's own limit, if it gave one


@dataclass
class FakeLLM:
    reply: str = "Sure. Here is a short answer, for you."
    token_delay_s: float = 0.01
    echo: bool = False  # reply "You said: <last user message>." instead
    tool_call: dict | None = None  # {name, arguments (dict or raw JSON text)}: call it when tools are offered
    tool_preamble: str = ""  # text said before the tool call
    max_tokens: int | None = None  # as a server's: stop after this many words and end with a ReplyCut
    streams: list[StreamRecord] = field(default_factory=list)
    warmed: list[list[Message]] = field(default_factory=list)  # every warm() call's history
    warm_tickets: list[Ticket] = field(default_factory=list)

    async def warm(self, history: Sequence[Message]) -> None:
        self.warmed.append(list(history))
        self.warm_tickets.append(ticket_now())

    async def stream(self, messages: Sequence[Message], tools: Sequence[dict] | None = None,
                     tool_choice: str | dict | None = None, max_tokens: int | None = None
                     ) -> AsyncIterator[str | ToolCallDelta | ReplyCut]:
        rec = StreamRecord(list(messages), ticket=ticket_now(), tools=list(tools or []), tool_choice=tool_choice,
                           max_tokens=max_tokens)
        limit = min(x for x in (self.max_tokens, max_tokens, 1 << 30) if x is not None)
        self.streams.append(rec)
        last = messages[-1]
        calling = (self.tool_call is not None and tools and tool_choice != "none" and last.role == "user")
        if last.role == "tool":
            text = f"The tool said: {last.content}."
        elif calling:
            text = self.tool_preamble
        else:
            text = f"You said: {last.content}." if self.echo else self.reply
        try:
            for i, word in enumerate(text.split(" ") if text else []):
                if i >= limit:
                    rec.finished = True
                    yield ReplyCut()
                    return
                await asyncio.sleep(self.token_delay_s)
                rec.pieces_sent += 1
                yield word if i == 0 else " " + word
            if calling:
                async for piece in self._call(rec):
                    yield piece
            rec.finished = True
        finally:
            if not rec.finished:
                rec.closed_early = True

    async def _call(self, rec: StreamRecord) -> AsyncIterator[ToolCallDelta]:
        assert self.tool_call is not None
        args = self.tool_call.get("arguments", {})
        text = args if isinstance(args, str) else json.dumps(args)
        call_id = f"call_{len(self.streams)}"
        await asyncio.sleep(self.token_delay_s)
        rec.pieces_sent += 1
        yield ToolCallDelta(0, call_id, self.tool_call["name"], "")
        step = max(1, len(text) // 3)
        for i in range(0, len(text), step):
            await asyncio.sleep(self.token_delay_s)
            rec.pieces_sent += 1
            yield ToolCallDelta(0, arguments=text[i:i + step])


def build(options: dict, env) -> FakeLLM:
    return FakeLLM(reply=options.get("reply", FakeLLM.reply), token_delay_s=float(options.get("token_delay_s", 0.01)),
                   echo=bool(options.get("echo", False)), tool_call=options.get("tool_call"),
                   tool_preamble=options.get("tool_preamble", ""))
