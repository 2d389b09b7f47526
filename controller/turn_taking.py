"""Turn-taking at the edges of a turn, kept apart from the state machine that calls it:

- at a pause, ask the end-of-turn model how finished the speaker sounds (its answer sets the
  wait: controller/turn_policy.py);
- speech after the end of turn but before any of the reply was heard: take the turn back;
- speech over a reply (barge-in): silence it at once, hold it, and at the end of the
  interrupting turn resume it if that carried no words, else end it with what was heard.

A mixin of controller.controller.Controller: it uses the controller's state, stages and context.
docs/turn-taking.md has the measurements.
"""
from __future__ import annotations

import asyncio
import logging

import numpy as np

from controller.events import ResponseDone, ResponseResumed, SpeechStarted, TurnJudged, TurnTakenBack, new_id
from controller.metrics import turn_metrics
from controller.states import State
from controller.turn_policy import is_false_interruption
from core.scheduler import Kind, working_for
from streaming_tokenizer.base import UserInput

log = logging.getLogger(__name__)
WORDS_WAIT_S = 0.25  # longest a speculative reply waits for the chat model to read the pause's words


class TurnTaking:
    _words_task: asyncio.Task | None = None  # the chat model reading this pause's words (no speculation)

    def _judge_pause(self) -> None:
        """Ask the end-of-turn model about this pause (its answer sets the wait, turn_policy.py).
        Until it answers the fixed wait holds, so a slow model only costs latency, never an
        early reply."""
        self._cancel_task(self._judge_task)
        self._cancel_task(self._words_task)
        if self.stages.turn is None or not self.cfg.semantic_turn or not self._turn_audio:
            return
        audio = np.concatenate(self._turn_audio)
        with working_for(self._ticket(Kind.SPECULATIVE)):
            self._judge_task = asyncio.create_task(self._judge(audio))

    async def _judge(self, audio: np.ndarray) -> None:
        try:
            p = await self.stages.turn.completion(audio)
        except Exception:  # the fixed wait still ends the turn
            log.warning("end-of-turn model failed; using the fixed wait", exc_info=True)
            return
        if p is not None and self.state is State.USER_PAUSED:
            wait = self.detector.judged(p)
            self.emit(TurnJudged(self._item_id, round(p, 3), wait, self.t_ms))

    def _judge_words(self, heard: UserInput) -> None:
        """The pause's transcript is back (no speculation): its hints at once, and the chat
        model's P(end) of the words when it answers."""
        self.detector.hint(heard.text)
        self._cancel_task(self._words_task)
        with working_for(self._ticket(Kind.SPECULATIVE)):
            self._words_task = asyncio.create_task(self._read_words(heard))

    async def _transcribe_and_read(self) -> UserInput:
        """The speculative reply's input: the transcript, after the chat model has read the words
        (llm/turn_end.py). In this order, not side by side: both requests would share llama.cpp's
        one thread, slowing the reply's first token (measured: +20-200 ms), while one after the
        other the reply finds the words already in the slot's prompt cache. Bounded by
        WORDS_WAIT_S: a busy LLM server costs the signal, not the reply."""
        heard = await self._transcribe()
        if self.state is State.USER_PAUSED:
            try:
                await asyncio.wait_for(self._read_words(heard), WORDS_WAIT_S)
            except asyncio.TimeoutError:
                log.debug("the words' end-of-turn probability came too late; the reply goes on")
        return heard

    async def _read_words(self, heard: UserInput) -> None:
        """Ask the chat model for the words' P(end) (with the end-of-turn model only, as
        semantic_vad) and let it set this pause's wait, if the pause is still the same."""
        score = getattr(self.stages.llm, "turn_end_probability", None)  # optional for LLM stages
        if score is None or self.stages.turn is None or not self.cfg.semantic_turn or not heard.text.strip():
            return
        pause = self.detector.pauses
        try:
            p = await score(self.context.messages(), heard.text, heard.language)
        except Exception:  # the audio model's wait stands
            log.warning("scoring the words' end of turn failed", exc_info=True)
            return
        if p is not None and self.state is State.USER_PAUSED and self.detector.pauses == pause:
            wait = self.detector.words_judged(p)
            self.emit(TurnJudged(self._item_id, self.detector.probability, wait, self.t_ms, round(p, 3)))

    # -- speech over a reply ------------------------------------------------------------------

    def _barge_in(self) -> None:
        """The user talks over the reply: silence it now. Whether it ends depends on what they
        say (a cough or an "mm-hm" lets it play on, _end_turn); without that option, it ends
        here and only what was heard is kept."""
        self.output.clear()  # drop queued audio first: this is what the caller hears stop
        self._cancel_task(self._end_task)
        self._interrupt_tools("barge-in")
        reply, self._reply = self._reply, None
        if reply is not None:
            heard_s = reply.heard_offset_s + self.output.played_seconds()
            self._interrupted = (reply, heard_s, reply.heard_text(heard_s))
            if self.cfg.resume_after_false_interruption:
                reply.hold(heard_s)
            else:
                self._settle_interruption()
        self._start_user_turn(barge_in=True)

    def _reply_unheard(self) -> bool:
        """Still nothing of this turn's reply has reached the caller's ears (so speech now means
        the user had only paused). Once audio plays, speech over it is a barge-in."""
        if not self._may_take_back or self.state is not State.BOT_REPLYING:
            return False
        if self._reply is not None and self._reply.playing and self.output.played_seconds() > 0:
            self._may_take_back = False
        return self._may_take_back

    def _take_back_turn(self) -> None:
        """The end of turn was premature: withdraw the reply before anyone heard it and carry on
        with the same turn (the tokenizer still holds its audio; the frames since the pause are
        added, silence included, so the transcript reads as one utterance)."""
        self._may_take_back = False
        self._cancel_task(self._end_task)  # closes the LLM stream of a reply still being prepared
        reply, self._reply = self._reply, None
        if reply is not None:
            self.output.clear()
            self.emit(ResponseDone(reply.response_id, reply.item_id, "cancelled", "", "turn_resumed",
                                   calls=self._finished_calls(reply, completed=False), message=reply.has_message))
            asyncio.create_task(reply.cancel())
        old_item = self._item_id
        committed = self.context.delete(old_item)
        self._item_id = new_id("item")
        for frame in self._preroll:
            self.stages.tokenizer.push(frame)
            self._turn_audio.append(frame)
        self._preroll.clear()
        self._has_input = True
        self.emit(TurnTakenBack(old_item, committed, self._item_id, self.t_ms,
                                reply.response_id if reply is not None else None))
        self.emit(SpeechStarted(self._item_id, self._speech_start_ms))

    def _settle_interruption(self, reason: str = "barge_in") -> None:
        """The interrupted reply ends: the context keeps only what the caller heard."""
        pending, self._interrupted = self._interrupted, None
        if pending is None:
            return
        reply, heard_s, heard = pending
        if reply.has_message:
            self.context.add_assistant(heard, heard_s, reply.item_id)
        self.emit(ResponseDone(reply.response_id, reply.item_id, "cancelled", heard, reason,
                               calls=self._finished_calls(reply, completed=False), message=reply.has_message))
        self.emit(turn_metrics(reply, *reply.turn_facts))
        asyncio.create_task(reply.cancel())

    async def _resume_if_no_words(self) -> bool:
        """End of a turn that began as a barge-in: if it carried no words, drop it and let the
        interrupted reply play on from where the caller stopped hearing it."""
        if self._interrupted is None:
            return False
        user = await self.stages.tokenizer.finalize() if self._has_input else None
        if user is not None and not is_false_interruption(user.text, self._turn_voiced_ms):
            self._settle_interruption()
            return False
        reply = self._interrupted[0]
        self._interrupted = None
        self._may_take_back = False  # the caller has heard this reply: speech over it is a barge-in
        self.stages.tokenizer.reset()  # the cough is not a turn: nothing enters the context
        self._has_input = False
        self._item_id = new_id("item")
        self.emit(ResponseResumed(reply.response_id, reply.item_id, reply.heard_offset_s, user.text if user else ""))
        self._reply = reply
        reply.resume(self.output)
        return True
