"""A scripted LLM for tests. It records every stream it opened and whether it was closed
before it finished, so tests can assert that a discarded speculation really stopped the LLM."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from core.scheduler import Ticket, ticket_now
from llm.base import Message


@dataclass
class StreamRecord:
    messages: list[Message]
    pieces_sent: int = 0
    finished: bool = False  # ran to the end
    closed_early: bool = False  # closed (cancelled) before the end
    ticket: Ticket | None = None  # what the scheduler was told this work is for


@dataclass
class FakeLLM:
    reply: str = "Sure. Here is a short answer, for you."
    token_delay_s: float = 0.01
    echo: bool = False  # reply "You said: <last user message>." instead
    streams: list[StreamRecord] = field(default_factory=list)
    warmed: list[list[Message]] = field(default_factory=list)  # every warm() call's history
    warm_tickets: list[Ticket] = field(default_factory=list)

    async def warm(self, history: Sequence[Message]) -> None:
        self.warmed.append(list(history))
        self.warm_tickets.append(ticket_now())

    async def stream(self, messages: Sequence[Message]) -> AsyncIterator[str]:
        rec = StreamRecord(list(messages), ticket=ticket_now())
        self.streams.append(rec)
        text = f"You said: {messages[-1].content}." if self.echo else self.reply
        words = text.split(" ")
        try:
            for i, word in enumerate(words):
                await asyncio.sleep(self.token_delay_s)
                rec.pieces_sent += 1
                yield word if i == 0 else " " + word
            rec.finished = True
        finally:
            if not rec.finished:
                rec.closed_early = True


def build(options: dict, env) -> FakeLLM:
    return FakeLLM(reply=options.get("reply", FakeLLM.reply), token_delay_s=float(options.get("token_delay_s", 0.01)),
                   echo=bool(options.get("echo", False)))
