"""The controller's answers to client requests (the Realtime API's commit, response.create and
.cancel, clear, truncate, conversation items), kept apart from the state machine they drive.

A mixin of controller.controller.Controller: it uses the controller's state, stages and context.
"""
from __future__ import annotations

import time

from controller.events import ResponseDone, new_id
from controller.states import Signal, State
from streaming_tokenizer.base import UserInput


class ClientRequests:
    # Realtime `max_output_tokens`: the session's (None: "inf", the LLM stage's own limit), and a
    # response.create's for the next response only.
    max_output_tokens: int | None = None
    _next_max_output_tokens: int | None = None

    def override_max_output_tokens(self, limit: int | None) -> None:
        """response.create's `max_output_tokens`: for the next response only (None: the session's;
        0: none, "inf")."""
        self._next_max_output_tokens = limit

    def reply_options(self) -> dict:
        """What the next reply may do and how long it may run: the offered tools (controller/tools.py),
        the output-token limit and the sentence limit (controller/reply_text.py)."""
        tools, tool_choice = self.offered_tools()
        limit = self.max_output_tokens if self._next_max_output_tokens is None else self._next_max_output_tokens
        self._next_max_output_tokens = None
        return {"tools": tools, "tool_choice": tool_choice, "max_tokens": limit or None,
                "max_sentences": self.cfg.max_reply_sentences}

    def set_input_language(self, language: str | None) -> None:
        """The caller's language for transcription (None: the server's configured behaviour).
        ValueError if the model does not know it, or the tokenizer takes no hint (Step-Audio's
        audio tokens have no language) and one was given."""
        setter = getattr(self.stages.tokenizer, "set_language", None)
        if setter is None:
            if language is not None:
                raise ValueError("this server's speech tokenizer takes no language (config: tokenizer.impl)")
            return
        setter(language)

    async def commit_input(self) -> UserInput | None:
        """input_audio_buffer.commit: the turn ends here; no reply unless server VAD is on."""
        self._discard_speculation()
        self._settle_interruption()
        if not self._has_input:
            return None
        if self.state in (State.USER_SPEAKING, State.USER_PAUSED):
            self.state = State.SILENCE
        self._held_frames.clear()
        user = await self._commit_input()
        # The next turn starts from an empty buffer under a new item id (with server VAD the
        # next onset would do this; with client commits nothing else would).
        self.stages.tokenizer.reset()
        self._item_id = new_id("item")
        return user

    def create_response(self) -> None:
        """response.create: answer from the history as it stands."""
        self._eot_wall = time.monotonic()
        self.signal(Signal.END_OF_TURN, "response.create")

    async def cancel_response(self) -> bool:
        reply, self._reply = self._reply, None
        self._cancel_task(self._end_task)
        if reply is None:
            if self._tool_task is not None:  # server tools ran for the response: no follow-up
                self._interrupt_tools("response.cancel")
                self.signal(Signal.REPLY_DONE, "response.cancel")
                return True
            if self._interrupted is None:
                return False
            self._settle_interruption("client_cancelled")
            return True
        self.output.clear()
        heard_s = reply.heard_offset_s + self.output.played_seconds()
        heard = reply.heard_text(heard_s)
        if reply.has_message:
            self.context.add_assistant(heard, heard_s, reply.item_id)
        self.emit(ResponseDone(reply.response_id, reply.item_id, "cancelled", heard, "client_cancelled",
                               calls=self._finished_calls(reply, completed=False), message=reply.has_message))
        await reply.cancel()
        self.signal(Signal.REPLY_DONE, "response.cancel")
        return True

    def clear_input(self) -> None:
        """input_audio_buffer.clear."""
        self._discard_speculation()
        self._settle_interruption()
        self.stages.tokenizer.reset()
        self._has_input = False
        self._held_frames.clear()
        if self.state in (State.USER_SPEAKING, State.USER_PAUSED):
            self.state = State.SILENCE

    def truncate(self, item_id: str, audio_end_ms: int) -> bool:
        """conversation.item.truncate: the client heard only audio_end_ms of an assistant item."""
        reply = self._reply
        if reply is not None and reply.item_id == item_id:
            return self.context.truncate(item_id, reply.heard_text(audio_end_ms / 1000), audio_end_ms / 1000)
        for turn in self.context.turns:
            if turn.item_id == item_id and turn.role == "assistant":
                words = turn.text.split()
                if turn.speech_seconds > 0:
                    keep = int(len(words) * min(1.0, audio_end_ms / 1000 / turn.speech_seconds))
                    words = words[:keep]
                return self.context.truncate(item_id, " ".join(words), audio_end_ms / 1000)
        return False

    def add_message(self, role: str, text: str, item_id: str | None = None,
                    previous_item_id: str | None = None) -> str:
        """conversation.item.create: a typed message joins the history; the next reply sees it.

        Raises KeyError if previous_item_id names no item."""
        item_id = item_id or new_id("item")
        self.context.add_message(role, text, item_id, previous_item_id)
        return item_id

    def add_function_output(self, call_id: str, output: str, item_id: str | None = None,
                            previous_item_id: str | None = None) -> str:
        """conversation.item.create of a function_call_output: the client's result of a call.

        Raises LookupError if no function_call has this call id, KeyError for previous_item_id."""
        if self.context.find_call(call_id) is None:
            raise LookupError(call_id)
        item_id = item_id or new_id("item")
        self.context.add_function_output(call_id, output, item_id, previous_item_id)
        return item_id

    def add_function_call(self, call_id: str, name: str, arguments: str, item_id: str | None = None) -> str:
        """conversation.item.create of a function_call (a client replaying a conversation)."""
        from llm.base import ToolCall

        item_id = item_id or new_id("item")
        self.context.add_function_call(ToolCall(call_id, name, arguments), item_id)
        return item_id

    def delete_item(self, item_id: str) -> bool:
        """conversation.item.delete: the item leaves the history. False if there is no such item."""
        return self.context.delete(item_id)

    def note_dtmf(self, digit: str) -> str:
        """A telephone keypress: a note in the history the next reply sees. Not speech, so no
        barge-in and no reply of its own."""
        item_id = new_id("item")
        self.context.add_message("system", f"The caller pressed {digit} on the phone keypad.", item_id)
        return item_id
