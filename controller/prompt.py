"""What the LLM is asked for a reply: the history as text plus the turn it answers.

A mixin of the Controller (controller/controller.py), which owns the state read here: the
context, the committed user turn and an interrupted reply being speculated on.
"""
from __future__ import annotations

from llm.base import Message
from streaming_tokenizer.base import UserInput


class PromptBuilding:
    def _reply_messages(self, user: UserInput | None, in_context: bool) -> list[Message]:
        if not in_context and user is not None:
            messages = self.context.messages(Message("user", user.prompt_text()))
            if self._interrupted is not None and self._interrupted[2]:
                # Speculating on an interruption: the history will hold what was heard of
                # the interrupted reply before this input (if the interruption is real).
                messages.insert(-1, Message("assistant", self._interrupted[2]))
            return messages
        # The input is already the last turn of the history, as its transcript. A spoken turn
        # with audio tokens (Step-Audio) is heard as those tokens; only past turns are text.
        last = self.context.turns[-1] if self.context.turns else None
        if self._committed is not None and last is not None and last.item_id == self._committed[0]:
            item_id, committed = self._committed
            if committed.audio_tokens:
                return self.context.messages(Message("user", committed.prompt_text()), replaces=item_id)
        return self.context.messages()
