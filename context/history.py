"""History as text, the way Step-Audio keeps it.

Past turns are stored as transcripts (user) and as the text actually spoken (assistant), not
as audio tokens. Step-Audio's tokenizer emits 16.67 linguistic + 25 semantic = 41.67 tokens per
second of speech; text costs a handful of tokens per second, hence the ~14:1 compression, which
compression_ratio() measures on the session's real turns.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from llm.base import Message

AUDIO_TOKENS_PER_SECOND = 1000 / 60 + 25  # linguistic 16.67 Hz + semantic 25 Hz


def count_text_tokens(text: str) -> int:
    """A tokenizer-free estimate (~4 chars per token for Latin text, 1 per CJK character).

    Good enough for a budget and for the compression ratio; the budget leaves headroom.
    """
    cjk = sum(1 for ch in text if "\u3000" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af")
    other = len(text) - cjk
    return cjk + (max(1, round(other / 4)) if other else 0)


@dataclass
class Turn:
    role: str  # "user" | "assistant"
    text: str
    speech_seconds: float = 0.0
    item_id: str = ""


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

    def truncate(self, item_id: str, heard_text: str, heard_seconds: float) -> bool:
        """Cut an assistant turn down to what the caller heard. False if no such turn."""
        for turn in reversed(self.turns):
            if turn.item_id == item_id and turn.role == "assistant":
                turn.text = heard_text
                turn.speech_seconds = min(turn.speech_seconds, heard_seconds)
                return True
        return False

    def messages(self, current: Message | None = None) -> list[Message]:
        """The prompt: system prompt, as many recent turns as fit the budget, then `current`.

        Oldest turns go first; the system prompt and the current input always stay.
        """
        budget = self.max_prompt_tokens - count_text_tokens(self.system_prompt)
        if current is not None:
            budget -= count_text_tokens(current.content)
        kept: list[Message] = []
        for turn in reversed(self.turns):
            if not turn.text:
                continue
            cost = count_text_tokens(turn.text) + 4  # role header
            if cost > budget:
                break
            budget -= cost
            kept.append(Message("user" if turn.role == "user" else "assistant", turn.text))
        kept.reverse()
        head = [Message("system", self.system_prompt)] if self.system_prompt else []
        return head + kept + ([current] if current is not None else [])

    def compression_ratio(self) -> float | None:
        """Audio tokens the history would cost ÷ text tokens it costs (None before any speech)."""
        seconds = sum(t.speech_seconds for t in self.turns)
        tokens = sum(count_text_tokens(t.text) for t in self.turns)
        if seconds <= 0 or tokens <= 0:
            return None
        return seconds * AUDIO_TOKENS_PER_SECOND / tokens
