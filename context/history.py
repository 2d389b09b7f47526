"""History as text, the way Step-Audio keeps it.

Past turns are stored as transcripts (user) and as the text actually spoken (assistant), not
as audio tokens. Step-Audio's tokenizer emits 16.67 linguistic + 25 semantic = 41.67 tokens per
second of speech; text costs a handful of tokens per second, hence the ~14:1 compression, which
compression_ratio() measures on the session's real turns.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from llm.base import Message, ToolCall

AUDIO_TOKENS_PER_SECOND = 1000 / 60 + 25  # linguistic 16.67 Hz + semantic 25 Hz


def count_text_tokens(text: str) -> int:
    """A tokenizer-free estimate (~4 chars per token for Latin text, 1 per CJK character).

    Good enough for a budget and for the compression ratio; the budget leaves headroom.
    """
    cjk = sum(1 for ch in text if "\u3000" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af")
    other = len(text) - cjk
    return cjk + (max(1, round(other / 4)) if other else 0)


ROOT = "root"  # previous_item_id that puts an item first (the Realtime API's word)


@dataclass
class Turn:
    role: str  # "user" | "assistant" | "system" (a system item added by the client) | "tool"
    text: str  # a "tool" turn: the function's output
    speech_seconds: float = 0.0
    item_id: str = ""
    call: ToolCall | None = None  # a function_call item (role "assistant", no text)
    call_id: str = ""  # a function_call_output item (role "tool"): the call it answers


@dataclass
class Context:
    system_prompt: str = ""
    max_prompt_tokens: int = 1536
    turns: list[Turn] = field(default_factory=list)

    def add_user(self, text: str, speech_seconds: float, item_id: str = "") -> Turn:
        turn = Turn("user", text, speech_seconds, item_id)
        self.turns.append(turn)
        return turn

    def add_assistant(self, text: str, speech_seconds: float, item_id: str = "") -> Turn:
        turn = Turn("assistant", text, speech_seconds, item_id)
        self.turns.append(turn)
        return turn

    def add_message(self, role: str, text: str, item_id: str, previous_item_id: str | None = None) -> Turn:
        """A typed item (no speech). After `previous_item_id` (ROOT: first), else at the end.

        Raises KeyError if previous_item_id names no turn, ValueError for an unknown role."""
        if role not in ("user", "assistant", "system"):
            raise ValueError(f"unknown role {role!r}")
        turn = Turn(role, text, 0.0, item_id)
        self._insert(turn, previous_item_id)
        return turn

    def _insert(self, turn: Turn, previous_item_id: str | None) -> None:
        if previous_item_id is None:
            self.turns.append(turn)
        elif previous_item_id == ROOT:
            self.turns.insert(0, turn)
        else:
            self.turns.insert(self._index(previous_item_id) + 1, turn)

    def add_function_call(self, call: ToolCall, item_id: str) -> Turn:
        """A function_call item: the model (or the client) called `call.name`."""
        turn = Turn("assistant", "", 0.0, item_id, call=call)
        self.turns.append(turn)
        return turn

    def add_function_output(self, call_id: str, output: str, item_id: str,
                            previous_item_id: str | None = None) -> Turn:
        """A function_call_output item: the result of call `call_id` (after `previous_item_id`)."""
        turn = Turn("tool", output, 0.0, item_id, call_id=call_id)
        self._insert(turn, previous_item_id)
        return turn

    def find_call(self, call_id: str) -> Turn | None:
        """The function_call item with this call id, if any."""
        return next((t for t in self.turns if t.call is not None and t.call.call_id == call_id), None)

    def delete(self, item_id: str) -> bool:
        """Remove the turn with this item id. False if there is none."""
        try:
            del self.turns[self._index(item_id)]
        except KeyError:
            return False
        return True

    def find(self, item_id: str) -> Turn | None:
        try:
            return self.turns[self._index(item_id)]
        except KeyError:
            return None

    def previous_id(self, item_id: str) -> str | None:
        """The item id of the turn before this one (None if it is first)."""
        i = self._index(item_id)
        return self.turns[i - 1].item_id if i > 0 else None

    def _index(self, item_id: str) -> int:
        for i, turn in enumerate(self.turns):
            if item_id and turn.item_id == item_id:
                return i
        raise KeyError(item_id)

    def truncate(self, item_id: str, heard_text: str, heard_seconds: float) -> bool:
        """Cut an assistant turn down to what the caller heard. False if no such turn."""
        for turn in reversed(self.turns):
            if turn.item_id == item_id and turn.role == "assistant":
                turn.text = heard_text
                turn.speech_seconds = min(turn.speech_seconds, heard_seconds)
                return True
        return False

    def messages(self, current: Message | None = None, replaces: str = "") -> list[Message]:
        """The prompt: system prompt, as many recent turns as fit the budget, then `current`.

        Oldest turns go first; the system prompt and the current input always stay. System items
        join the system prompt (in order) rather than sitting mid-conversation, because many chat
        templates accept a system message only first. `replaces`: the item id of the history turn
        that `current` stands for (a spoken turn kept as its transcript, sent as audio tokens); it
        is left out of the history.
        """
        system_items = [turn.text for turn in self.turns if turn.role == "system"]
        system = "\n\n".join(text for text in [self.system_prompt, *system_items] if text)
        budget = self.max_prompt_tokens - count_text_tokens(system)
        if current is not None:
            budget -= count_text_tokens(current.content)
        kept: list[Message] = []
        for turn in reversed(self.turns):
            if turn.role == "system" or (replaces and turn.item_id == replaces):
                continue
            if not turn.text and turn.call is None and turn.role != "tool":
                continue
            text = turn.text if turn.call is None else turn.call.name + turn.call.arguments
            cost = count_text_tokens(text) + 4  # role header
            if cost > budget:
                break
            budget -= cost
            kept.append(_message(turn))
        kept.reverse()
        while kept and kept[0].role == "tool":  # a result whose call was cut off by the budget
            kept.pop(0)
        head = [Message("system", system)] if system else []
        return head + _merge_calls(kept) + ([current] if current is not None else [])

    def compression_ratio(self) -> float | None:
        """Audio tokens the history would cost ÷ text tokens it costs (None before any speech)."""
        seconds = sum(t.speech_seconds for t in self.turns)
        tokens = sum(count_text_tokens(t.text) for t in self.turns)
        if seconds <= 0 or tokens <= 0:
            return None
        return seconds * AUDIO_TOKENS_PER_SECOND / tokens


def _message(turn: Turn) -> Message:
    if turn.call is not None:
        return Message("assistant", "", tool_calls=(turn.call,))
    if turn.role == "tool":
        return Message("tool", turn.text, tool_call_id=turn.call_id)
    return Message("user" if turn.role == "user" else "assistant", turn.text)


def _merge_calls(messages: list[Message]) -> list[Message]:
    """Function calls join the assistant message before them (what it said, then what it called):
    chat templates expect one assistant message with its `tool_calls`."""
    out: list[Message] = []
    for m in messages:
        prev = out[-1] if out else None
        if m.tool_calls and prev is not None and prev.role == "assistant":
            out[-1] = Message("assistant", prev.content, prev.tool_calls + m.tool_calls)
        else:
            out.append(m)
    return out
