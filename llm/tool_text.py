"""Tool calls that a small model writes as text instead of in its template's format.

Qwen2.5-Coder-0.5B, asked with tools, answers with the call as a JSON block (```json {"name":
..., "arguments": {...}} ```) rather than inside <tool_call> tags, so llama-server's parser
passes it on as text — which would be read aloud. When tools were offered and a reply *starts*
like a call (`{`, a ``` fence or <tool_call>), it is held to its end and, if it opens with a call
({"name": …, "arguments": {…}}), becomes a tool call — what follows the call (the model explaining
it) is dropped, and a call of a tool not offered still becomes a call, which the controller
answers with an error rather than the caller hearing JSON read aloud. Anything else is passed on
as text, unchanged.
"""
from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Iterable

from llm.base import ReplyCut, ToolCallDelta

log = logging.getLogger(__name__)
_OPENERS = ("{", "[", "```", "<tool_call>")
_OPENING = re.compile(r"^\s*(?:```(?:json)?|<tool_call>)?\s*")


async def calls_in_text(pieces: AsyncIterator[str | ToolCallDelta | ReplyCut], tool_names: Iterable[str]
                        ) -> AsyncIterator[str | ToolCallDelta | ReplyCut]:
    names = set(tool_names)
    head, holding, decided = "", False, False
    cut: ReplyCut | None = None  # the server stopped at max_tokens: said last, after the text
    async for piece in pieces:
        if isinstance(piece, ReplyCut):
            cut = piece
            continue
        if decided or isinstance(piece, ToolCallDelta):
            if head and not holding:
                yield head
                head = ""
            decided = True
            yield piece
            continue
        head += piece
        start = head.lstrip()
        if not start or any(o.startswith(start) for o in _OPENERS if len(start) < len(o)):
            continue  # too little yet to tell
        if start.startswith(_OPENERS):
            holding = True
            continue  # may be a call: hold it to the end
        decided = True
        yield head
        head = ""
    calls = parse_calls(head, names) if head and holding else []
    if head and not calls and holding and cut is not None:
        # Began like a call (JSON, a code fence) and was cut by max_tokens: no call, and no
        # sentence to say either.
        log.warning("the model's reply began like a tool call and was cut at max_tokens: not spoken")
    elif head and not calls:
        yield head
    for i, (name, arguments) in enumerate(calls):
        yield ToolCallDelta(i, f"call_{uuid.uuid4().hex[:20]}", name, arguments)
    if cut is not None:
        yield cut


def parse_calls(text: str, names: set[str]) -> list[tuple[str, str]]:
    """[(name, arguments JSON)] if `text` opens with calls (of tools in `names`, or objects of just
    `name` and `arguments`), else []."""
    body = _OPENING.sub("", text, count=1)
    try:
        data, _ = json.JSONDecoder().raw_decode(body)
    except ValueError:
        return []
    out = []
    for call in data if isinstance(data, list) else [data]:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return []
        args = call.get("arguments", call.get("parameters", {}))
        shaped = set(call) <= {"name", "arguments", "parameters"} and isinstance(args, dict)
        if call["name"] not in names and not shaped:
            return []
        out.append((call["name"], args if isinstance(args, str) else json.dumps(args)))
    return out
