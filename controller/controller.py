"""The per-session controller: Step-Audio's real-time state machine driving the stages.

Audio frames come in (push_audio); VAD probabilities become timed signals; signals move the
state through controller/states.py's table; entering a state starts or cancels work:

  UserSpeaking → UserPaused   start a speculative Reply (transcribe, LLM, first audio; play nothing)
                              and ask the end-of-turn model how long to wait (turn_taking.py)
  UserPaused   → UserSpeaking discard it (the LLM stream is closed)
  UserPaused   → BotReplying  commit it if its input equals the final input, else start fresh
  BotReplying  → UserSpeaking take-back (nothing heard yet: the turn goes on) or barge-in (drop
                              queued audio, hold the reply until the words show it was meant)

Frames are handled synchronously (cheap); all model work runs in tasks that can be cancelled.
"""
from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from context.history import Context
from controller.client_requests import ClientRequests
from controller.config import ControllerConfig
from controller.failures import StageTimeout, describe_failure
from controller.events import (
    ErrorEvent, InputCommitted, InputTranscript, ResponseCreated, ResponseDone, SpeechStarted, SpeechStopped,
    Speculation, StateChanged, new_id,
)
from controller.metrics import SpeculationStats, turn_metrics
from controller.prompt import PromptBuilding
from controller.ports import AudioOutput, ToolRunner
from controller.reply import Reply
from controller.states import Signal, State, next_state
from controller.turn_taking import TurnTaking
from controller.tools import ToolCalls
from controller.turns import TurnDetector
from core.scheduler import Kind, Ticket, current_ticket, working_for
from decoder.base import Decoder
from llm.base import LLMClient, Message
from streaming_tokenizer.base import StreamingTokenizer, UserInput
from vad.base import FRAME_SAMPLES, TurnCompletion, VoiceActivity

log = logging.getLogger(__name__)
FRAME_MS = 20


@dataclass
class Stages:
    vad: VoiceActivity
    tokenizer: StreamingTokenizer
    llm: LLMClient
    decoder: Decoder
    turn: TurnCompletion | None = None  # the end-of-turn model; None: the fixed wait


class Controller(ClientRequests, TurnTaking, ToolCalls, PromptBuilding):
    def __init__(
        self,
        stages: Stages,
        context: Context,
        output: AudioOutput,
        emit: Callable[[object], None],
        config: ControllerConfig | None = None,
        stats: SpeculationStats | None = None,
        session_id: str = "",
        tool_runner: ToolRunner | None = None,
    ) -> None:
        self.cfg = config or ControllerConfig()
        self._init_tools(tool_runner)  # controller/tools.py
        self.session_id = session_id  # names this session's model work in the scheduler
        self.stages = stages
        self.context = context
        self.output = output
        self.emit = emit
        self.stats = stats or SpeculationStats()
        self.state = State.SILENCE
        self.turn_detection = True  # server VAD; False: the client commits (Realtime API)
        self.auto_respond = True  # reply at the end of a turn (Realtime: create_response)
        self.interruptible = True  # speech may cut a reply short (Realtime: interrupt_response)
        self.t_ms = 0  # the session's audio clock
        self.detector = TurnDetector(self.cfg)
        # Long enough for a barge-in's speech (detected only after barge_in_ms of it) plus preroll.
        self._preroll: deque[np.ndarray] = deque(
            maxlen=max(1, (self.cfg.preroll_ms + 2 * self.cfg.barge_in_ms) // FRAME_MS))
        self._held_frames: list[np.ndarray] = []  # silence during a pause, pushed only on resume
        # The turn as the end-of-turn model hears it: speech and pauses, the last 8 s.
        self._turn_audio: deque[np.ndarray] = deque(maxlen=8000 // FRAME_MS)
        self._judge_task: asyncio.Task | None = None
        # A reply the user spoke over, held until their words show whether they meant it:
        # (reply, seconds heard, text heard).
        self._interrupted: tuple[Reply, float, str] | None = None
        self._may_take_back = False  # the server ended the turn and nothing of the reply was heard yet
        self._turn_voiced_ms = 0  # speech (by the VAD) in the current user turn
        self._has_input = False  # the tokenizer holds audio of an uncommitted turn
        self._committed: tuple[str, UserInput] | None = None  # the last input committed: (item id, input)
        self._item_id = new_id("item")
        self._speech_start_ms = 0
        self._speculation: Reply | None = None
        self._reply: Reply | None = None
        self._end_task: asyncio.Task | None = None
        self._warm_task: asyncio.Task | None = None
        self._warm_ticket: Ticket | None = None
        self._eot_wall: float | None = None
        self._closed = False

    # -- input ---------------------------------------------------------------------------------

    @property
    def has_uncommitted_input(self) -> bool:
        """The tokenizer holds audio of a turn not committed yet."""
        return self._has_input

    def push_audio(self, frame: np.ndarray) -> None:
        """One 20 ms frame of 16 kHz int16 mono audio."""
        if len(frame) != FRAME_SAMPLES:
            raise ValueError(f"expected {FRAME_SAMPLES} samples, got {len(frame)}")
        self.t_ms += FRAME_MS
        prob = self.stages.vad.process(frame) if self.turn_detection else 1.0
        if not self.turn_detection:
            self.stages.tokenizer.push(frame)
            self._has_input = True
            return
        self.detector.reply_unheard = self._reply_unheard()
        speech = prob >= self.cfg.speech_threshold
        if speech and self.state in (State.USER_SPEAKING, State.USER_PAUSED):
            self._turn_voiced_ms += FRAME_MS
        signal = self.detector.update(self.state, speech, self.t_ms)
        if signal is Signal.END_OF_TURN and self.state is State.USER_PAUSED:
            self._may_take_back = self.cfg.take_back_turns and self.auto_respond
        self._route_frame(frame)
        if signal is Signal.END_OF_TURN and not self.auto_respond:
            signal = Signal.COMMIT
        if signal in (Signal.BARGE_IN, Signal.TAKE_BACK) and not self.interruptible:
            signal = None
        if signal is not None:
            self.signal(signal)

    def _route_frame(self, frame: np.ndarray) -> None:
        if self.state is State.USER_SPEAKING:
            self.stages.tokenizer.push(frame)
            self._turn_audio.append(frame)
            self._has_input = True
        elif self.state is State.USER_PAUSED:
            self._held_frames.append(frame)
            self._turn_audio.append(frame)
        else:  # Silence / BotReplying: keep a little audio so a turn's first syllable survives
            self._preroll.append(frame)

    # -- the state machine ---------------------------------------------------------------------

    def signal(self, signal: Signal, reason: str = "") -> None:
        new = next_state(self.state, signal)
        if new is None or self._closed:
            return
        old, self.state = self.state, new
        self.emit(StateChanged(new.value, old.value, reason or signal.value, self.t_ms))
        match (old, signal):
            case (State.SILENCE, Signal.SPEECH):
                self._start_user_turn()
            case (State.USER_SPEAKING, Signal.PAUSE):
                self._judge_pause()
                self._start_speculation()
            case (State.USER_PAUSED, Signal.SPEECH):
                self._cancel_task(self._judge_task)
                self._discard_speculation()
                for frame in self._held_frames:
                    self.stages.tokenizer.push(frame)
                self._held_frames.clear()
            case (_, Signal.END_OF_TURN):
                self._cancel_task(self._judge_task)
                self._held_frames.clear()
                self._eot_wall = time.monotonic()
                self._cancel_task(self._end_task)
                self._end_task = asyncio.create_task(self._end_turn())
            case (_, Signal.COMMIT):
                self._discard_speculation()
                self._held_frames.clear()
                self._cancel_task(self._end_task)
                self._end_task = asyncio.create_task(self._commit_only())
            case (State.BOT_REPLYING, Signal.BARGE_IN):
                self._barge_in()
            case (State.BOT_REPLYING, Signal.TAKE_BACK):
                self._take_back_turn()
            case (State.BOT_REPLYING, Signal.REPLY_DONE):
                pass

    def _start_user_turn(self, barge_in: bool = False) -> None:
        self._item_id = new_id("item")
        self._turn_voiced_ms = self.detector.talk_ms if barge_in else self.detector.speech_run_ms
        self.stages.tokenizer.reset()
        keep = len(self._preroll) if barge_in else self.cfg.preroll_ms // FRAME_MS + self.cfg.onset_ms // FRAME_MS
        kept = list(self._preroll)[-keep:] if keep else []
        for frame in kept:
            self.stages.tokenizer.push(frame)
        self._speech_start_ms = max(0, self.t_ms - self.cfg.onset_ms)
        self._turn_audio.clear()
        self._turn_audio.extend(kept)
        self._preroll.clear()
        self._has_input = True
        self.emit(SpeechStarted(self._item_id, self._speech_start_ms))
        # While the user talks, have the LLM server cache the conversation so far: at the pause
        # only the new words are evaluated (docs/llm.md, "Prompt cache and prefix warm-up").
        self._drop_warm_up()
        self._warm_ticket = self._ticket(Kind.WARMUP)
        with working_for(self._warm_ticket):  # the task takes the ticket along
            self._warm_task = asyncio.create_task(self._warm_llm(self.context.messages()))

    async def _warm_llm(self, history: list[Message]) -> None:
        warm = getattr(self.stages.llm, "warm", None)  # optional for LLM stages outside this repo
        if warm is not None:
            await warm(history)

    def _drop_warm_up(self) -> None:
        """A warm-up still queued when the turn's real work starts is superseded by it."""
        if self._warm_ticket is not None:
            self._warm_ticket.drop()
            self._warm_ticket = None

    def _ticket(self, kind: Kind, after_ms: int = 0) -> Ticket:
        return Ticket(self.session_id, kind, time.monotonic() + after_ms / 1000)

    # -- speculation ---------------------------------------------------------------------------

    def _start_speculation(self) -> None:
        self._drop_warm_up()
        if not self.cfg.speculation:
            # Still transcribe what was said so far, so the end of turn has less to do.
            with working_for(self._ticket(Kind.WARMUP)):
                asyncio.create_task(self._warm_transcript())
            return
        self._discard_speculation()
        # Needed when the end of turn would be confirmed, if the user stays silent.
        ticket = self._ticket(Kind.SPECULATIVE, self.cfg.end_of_turn_ms - self.cfg.pause_ms)
        spec = self._speculation = self._new_reply(self._transcribe_and_read(), ticket=ticket)
        self.stats.count("started")
        self.emit(Speculation("started", self.t_ms))
        asyncio.create_task(self._hint_from(spec))

    async def _hint_from(self, spec: Reply) -> None:
        await spec.input_ready.wait()
        if spec is self._speculation and spec.input is not None and self.state is State.USER_PAUSED:
            self.detector.hint(spec.input.text)  # the words' P(end) came before: _transcribe_and_read

    async def _warm_transcript(self) -> None:
        try:
            user = await self.stages.tokenizer.finalize()
        except Exception:  # the end of turn will try again and report it
            log.debug("warm-up transcription failed", exc_info=True)
            return
        if self.state is State.USER_PAUSED:
            self._judge_words(user)

    def _discard_speculation(self) -> None:
        spec, self._speculation = self._speculation, None
        if spec is not None:
            self.stats.count("discarded")
            self.emit(Speculation("discarded", self.t_ms, spec.input.text if spec.input else ""))
            asyncio.create_task(spec.cancel())

    # -- end of turn and replies ---------------------------------------------------------------

    async def _end_turn(self) -> None:
        """Confirmed end of turn: commit the input, then commit the speculation or start fresh."""
        spec, self._speculation = self._speculation, None
        self._drop_warm_up()
        current_ticket.set(self._ticket(Kind.FINAL))  # this task's transcription is awaited now
        if spec is not None:
            spec.ticket.commit()  # most likely the reply: its queued work moves up (dropped if not)
        try:
            if await self._resume_if_no_words():
                if spec is not None:
                    await spec.cancel()
                return
            user = await self._commit_input() if self._has_input else None
            if spec is not None:
                await spec.input_ready.wait()
                usable = spec.error is None and spec.input is not None
                if user is not None and usable and spec.input.same_as(user):
                    self.stats.count("committed")
                    self.emit(Speculation("committed", self.t_ms, user.text))
                    self._play(spec, speculative=True)
                    return
                self.stats.count("discarded")
                self.emit(Speculation("discarded", self.t_ms, spec.input.text if spec.input else ""))
                await spec.cancel()
            if user is not None and not user.text and not user.audio_tokens:
                self.signal(Signal.REPLY_DONE, "empty input")  # nothing was understood
                return
            self._play(self._new_reply(_ready(user), in_context=True), speculative=False)
        except asyncio.CancelledError:
            if spec is not None:
                await spec.cancel()
            raise
        except Exception as exc:
            log.exception("end of turn failed")
            self.emit(ErrorEvent("turn_failed", describe_failure("the turn could not be answered", exc)))
            self.signal(Signal.REPLY_DONE, "error")

    async def _commit_only(self) -> None:
        self._settle_interruption()
        try:
            await self._commit_input()
        except Exception as exc:
            log.exception("commit failed")
            self.emit(ErrorEvent("turn_failed", describe_failure("the input could not be committed", exc)))

    async def _transcribe(self) -> UserInput:
        """The tokenizer's transcript of the turn, within asr_timeout_s (queueing included)."""
        try:
            return await asyncio.wait_for(self.stages.tokenizer.finalize(), self.cfg.asr_timeout_s)
        except asyncio.TimeoutError:
            raise StageTimeout("speech recognition", self.cfg.asr_timeout_s) from None

    async def _commit_input(self) -> UserInput:
        user = await self._transcribe()
        self._has_input = False
        speech_end = max(self._speech_start_ms, self.detector.last_speech_ms)
        self.emit(SpeechStopped(self._item_id, speech_end))
        self.emit(InputCommitted(self._item_id))
        self.emit(InputTranscript(self._item_id, user.text))
        self.context.add_user(user.text, user.speech_seconds, self._item_id)
        self._committed = (self._item_id, user)
        self._tool_rounds = 0  # a new user turn: the server may answer tool calls again
        return user

    def _new_reply(self, user_input, in_context: bool = False, ticket: Ticket | None = None) -> Reply:
        def build(user: UserInput | None) -> list[Message]:
            return self._reply_messages(user, in_context)

        return Reply(
            **self.reply_options(),
            response_id=new_id("resp"),
            item_id=new_id("item"),
            user_input=user_input,
            build_messages=build,
            llm=self.stages.llm,
            decoder=self.stages.decoder,
            emit=self.emit,
            on_finished=self._reply_finished,
            ticket=ticket or self._ticket(Kind.FINAL),
            tts_timeout_s=self.cfg.tts_timeout_s,
        )

    def _play(self, reply: Reply, speculative: bool) -> None:
        self._reply = reply
        reply.speculative = speculative
        # The turn it answers, as it was now: a reply may finish after the next turn began (a
        # wordless interruption resumed it), and its figures belong to its own turn.
        reply.turn_facts = (self._eot_wall, copy.copy(self.detector), self._speech_start_ms)
        self.emit(ResponseCreated(reply.response_id, reply.item_id))
        self.output.clear()
        reply.play(self.output)

    def _reply_finished(self, reply: Reply) -> None:
        if reply is not self._reply:
            return
        self._reply = None
        status = "failed" if reply.error else "incomplete" if reply.cut_at_limit else "completed"
        if reply.error:
            self.emit(ErrorEvent("reply_failed", describe_failure("the reply failed", reply.error)))
        if reply.has_message:  # a response that only called adds no empty assistant message
            self.context.add_assistant(reply.spoken_text(), reply.spoken_seconds(), reply.item_id)
        calls = self._finished_calls(reply, completed=not reply.error)
        self.emit(ResponseDone(reply.response_id, reply.item_id, status, reply.spoken_text(), calls=calls,
                               message=reply.has_message))
        self.emit(turn_metrics(reply, *reply.turn_facts))
        if not reply.error and self._answer_calls(calls):
            return  # server-side tools run; a follow-up reply speaks their result (controller/tools.py)
        self.signal(Signal.REPLY_DONE)

    async def close(self) -> None:
        self._closed = True
        self._drop_warm_up()
        for task in (self._end_task, self._warm_task, self._judge_task, self._words_task):
            self._cancel_task(task)
        self._cancel_tools()
        if self._interrupted is not None:
            reply, self._interrupted = self._interrupted[0], None
            await reply.cancel()
        for reply in (self._speculation, self._reply):
            if reply is not None:
                await reply.cancel()
        self._speculation = self._reply = None

    @staticmethod
    def _cancel_task(task: asyncio.Task | None) -> None:
        if task is not None and not task.done():
            task.cancel()

async def _ready(value):
    return value
