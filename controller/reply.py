"""One reply in flight: LLM text → decoder audio, held back while it is only a speculation.

A Reply starts generating at once. Until play() is called its audio is kept, not played, so a
speculation costs the caller nothing when it is discarded; cancel() closes the LLM stream (the
server stops generating) and stops synthesis. After play(), audio goes straight to the output.

A function call in the LLM's stream becomes one of the reply's output items (`calls`). A
speculation that reaches one stops there until play(): no tool event goes out, and nothing runs,
for a turn the user has not finished (docs/tools.md).
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from controller.events import (
    AudioDone, FunctionCallDelta, FunctionCallDone, FunctionCallItem, FunctionCallStarted, TranscriptDelta, new_id,
)
from controller.failures import StageTimeout
from core.scheduler import Ticket, current_ticket
from controller.ports import AudioOutput
from controller.reply_text import SentenceGate
from decoder.base import AudioChunk, Decoder
from llm.base import LLMClient, Message, ReplyCut, ToolCallDelta
from streaming_tokenizer.base import UserInput

log = logging.getLogger(__name__)


class Reply:
    def __init__(
        self,
        *,
        response_id: str,
        item_id: str,
        user_input: Awaitable[UserInput | None],
        build_messages: Callable[[UserInput | None], Sequence[Message]],
        llm: LLMClient,
        decoder: Decoder,
        emit: Callable[[object], None],
        on_finished: Callable[["Reply"], None],
        ticket: Ticket | None = None,
        tools: Sequence[dict] = (),
        tool_choice: str | dict | None = None,
        tts_timeout_s: float | None = None,
        max_sentences: int | None = None,
        max_tokens: int | None = None,
    ) -> None:
        self.response_id = response_id
        self.item_id = item_id
        self.input: UserInput | None = None
        self.text = ""  # what the LLM wrote that goes to the decoder (not a dropped unfinished sentence)
        self.spoken: list[AudioChunk] = []  # what was handed to the output, in order
        self.error: BaseException | None = None
        self.t_start = time.monotonic()
        self.t_input: float | None = None  # transcript ready
        self.t_first_token: float | None = None
        self.t_first_audio: float | None = None  # first chunk synthesized (maybe held)
        self.t_last_token: float | None = None  # the LLM's stream ended
        self.t_audio_done: float | None = None  # the decoder's last chunk
        self.t_first_played: float | None = None  # first chunk handed to the output
        self._user_input = user_input
        self._build_messages = build_messages
        self._llm = llm
        self._decoder = decoder
        self._emit = emit
        self._on_finished = on_finished
        # Offered to the LLM only when there are any, so LLM stages without tool support still work.
        self._tool_args = {"tools": list(tools), "tool_choice": tool_choice} if tools else {}
        self._limit_args = {"max_tokens": max_tokens} if max_tokens else {}  # a client's max_output_tokens
        self.calls: list[FunctionCallItem] = []  # the function calls made, by the LLM's call index
        self.calls_done = False  # the LLM's stream ended: every call's arguments are whole
        self.cut_at_limit = False  # the LLM's server stopped it at max_tokens (Realtime: incomplete)
        self._first_call_index = 1  # 0 when the model called before saying anything (no message item)
        self._held: list[AudioChunk] = []
        self._replay: list[AudioChunk] = []  # written but not heard when held (text deltas already sent)
        self.heard_offset_s = 0.0  # audio heard before the last resume (the output counts anew)
        self.turn_facts: tuple = (None, None, 0)  # (end-of-turn wall time, detector, speech start) when played
        self._out: AudioOutput | None = None
        self._released = asyncio.Event()
        # Cleared while held (a possible interruption): synthesis stops pulling text, so a reply
        # that turns out to be cut costs no more TTS than its decoder's lookahead.
        self._may_generate = asyncio.Event()
        self._may_generate.set()
        self.input_ready = asyncio.Event()  # set once the input is known (or failed)
        self.speculative = False
        # What the model work of this reply is for (core.scheduler): the stages read it from the
        # task's context; a speculation's ticket is committed or dropped with it.
        self.ticket = ticket or Ticket()
        self.generated = asyncio.Event()
        # The decoder's deadline (tts_timeout_s): armed while it holds text and owes audio, paused
        # while it waits for the LLM (which has its own timeout) or while the reply is held.
        self._tts_timeout_s = tts_timeout_s
        self._max_sentences = max_sentences  # the reply ends after this many sentences (None: no limit)
        self._tts_deadline: asyncio.Timeout | None = None
        self.task = asyncio.create_task(self._run(), name=f"reply-{response_id}")

    @property
    def playing(self) -> bool:
        return self._out is not None

    def play(self, out: AudioOutput) -> None:
        """Commit: everything synthesized so far plays now, the rest as it comes."""
        if self._out is not None:
            return
        self._out = out
        out.begin_reply(self.response_id, self.item_id)
        held, self._held = self._held, []
        for chunk in held:
            self._write(chunk)
        self._released.set()

    def hold(self, heard_s: float) -> None:
        """A possible interruption: stop handing audio to the output (the caller already stopped
        hearing it) but keep generating; what was sent and not heard is kept to be played again.
        `heard_s`: the reply's audio the caller heard, from its start."""
        if self._out is None:
            return
        self._out = None
        self._released.clear()
        self._may_generate.clear()
        t, kept = 0.0, []
        for chunk in self.spoken:
            if t + chunk.seconds <= heard_s:
                kept.append(chunk)
            elif t >= heard_s:
                self._replay.append(chunk)
            else:  # cut inside this chunk: the rest plays again
                cut = int((heard_s - t) * chunk.sample_rate)
                kept.append(AudioChunk(chunk.pcm[:cut], chunk.sample_rate, chunk.text))
                self._replay.append(AudioChunk(chunk.pcm[cut:], chunk.sample_rate, ""))
            t += chunk.seconds
        self.spoken = kept
        self.heard_offset_s = heard_s

    def resume(self, out: AudioOutput) -> None:
        """The interruption carried no words: play on from where the caller stopped hearing."""
        if self._out is not None:
            return
        self._out = out
        out.begin_reply(self.response_id, self.item_id)
        replay, self._replay = self._replay, []
        for chunk in replay:
            self.spoken.append(chunk)
            out.write(chunk)
        held, self._held = self._held, []
        for chunk in held:
            self._write(chunk)
        self._released.set()
        self._may_generate.set()

    async def cancel(self) -> None:
        self.ticket.drop()  # queued model work of this reply goes before it runs
        if not self.task.done():
            self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        if inspect.iscoroutine(self._user_input) and \
                inspect.getcoroutinestate(self._user_input) == inspect.CORO_CREATED:
            self._user_input.close()  # cancelled before _run awaited it: no "never awaited" warning

    def heard_text(self, played_seconds: float) -> str:
        """The text of the audio the caller actually heard (by playback position).

        A text span starts at a chunk with text and runs over the following text-less chunks;
        a partly heard span keeps the share of its words that was played."""
        spans: list[tuple[str, float]] = []
        for chunk in self.spoken:
            if chunk.text or not spans:
                spans.append((chunk.text, chunk.seconds))
            else:
                spans[-1] = (spans[-1][0], spans[-1][1] + chunk.seconds)
        parts: list[str] = []
        t = 0.0
        for text, seconds in spans:
            if t >= played_seconds:
                break
            if t + seconds <= played_seconds:
                parts.append(text)
            else:
                words = text.split()
                n = int(len(words) * (played_seconds - t) / seconds)
                parts.append(" ".join(words[:n]))
            t += seconds
        return " ".join(p for p in parts if p).strip()

    def spoken_text(self) -> str:
        return " ".join(c.text for c in self.spoken if c.text).strip()

    def spoken_seconds(self) -> float:
        return sum(c.seconds for c in self.spoken)

    # -- internals -----------------------------------------------------------------------------

    def _write(self, chunk: AudioChunk) -> None:
        assert self._out is not None
        if self.t_first_played is None:
            self.t_first_played = time.monotonic()
        self.spoken.append(chunk)
        if chunk.text:  # first: the transport announces the message item before its first audio
            self._emit(TranscriptDelta(self.response_id, self.item_id, chunk.text + " "))
        self._out.write(chunk)

    def _deadline(self, armed: bool) -> None:
        if self._tts_deadline is not None and self._tts_timeout_s is not None and not self._tts_deadline.expired():
            when = asyncio.get_running_loop().time() + self._tts_timeout_s if armed else None
            self._tts_deadline.reschedule(when)

    async def _text(self, pieces: AsyncIterator[str | ToolCallDelta | ReplyCut]) -> AsyncIterator[str]:
        gate = SentenceGate(self._max_sentences)  # whole sentences only (controller/reply_text.py)
        try:
            while True:
                self._deadline(armed=False)  # waiting for the LLM
                try:
                    piece = await anext(pieces)
                except StopAsyncIteration:
                    break
                self._deadline(armed=True)  # the decoder has text: audio is owed
                if self.t_first_token is None:
                    self.t_first_token = time.monotonic()
                if isinstance(piece, ReplyCut):
                    self.cut_at_limit = True
                    continue
                if isinstance(piece, ToolCallDelta):
                    if not self.calls and (held := gate.finish(cut=False)):
                        self.text += held  # what the model said before calling is spoken
                        yield held
                    # Never speculative: a speculation waits here for its commit (play()); if it
                    # is discarded instead, it is cancelled here and nothing was announced.
                    await self._released.wait()
                    self._call_piece(piece)
                    continue
                if self.calls:  # words after a call (the model explaining it) are not spoken
                    continue
                if text := gate.feed(piece):
                    self.text += text
                    yield text
                if gate.full and not self._tool_args:
                    break  # max_sentences said: the finally closes the stream (with tools, a call may follow)
            if not self.calls and (rest := gate.finish(self.cut_at_limit)):
                self.text += rest
                yield rest
            if gate.dropped:
                log.info("reply %s: the model was cut at max_tokens; its unfinished sentence is not spoken: %r",
                         self.response_id, gate.dropped[:80])
            self._deadline(armed=True)  # the last text is in: the rest of the audio is owed
            self.t_last_token = time.monotonic()
            self.calls_done = True
            for call in self.calls:
                self._emit(FunctionCallDone(self.response_id, call))
        finally:
            # Closing the LLM's iterator closes its HTTP stream: the server stops generating.
            await pieces.aclose()  # type: ignore[attr-defined]

    @property
    def has_message(self) -> bool:
        """False for a response that only called: it has no assistant message item (as OpenAI's)."""
        return self._first_call_index == 1

    def _call_piece(self, piece: ToolCallDelta) -> None:
        if not self.calls:
            self._first_call_index = 1 if self.text.strip() else 0
        position = piece.index + self._first_call_index
        index = next((i for i, c in enumerate(self.calls) if c.output_index == position), None)
        if index is None:
            call = FunctionCallItem(new_id("item"), piece.call_id or new_id("call"), piece.name, "", position)
            self.calls.append(call)
            self._emit(FunctionCallStarted(self.response_id, call))
            index = len(self.calls) - 1
        old = self.calls[index]
        call = FunctionCallItem(old.item_id, old.call_id, old.name or piece.name, old.arguments + piece.arguments,
                                old.output_index)
        self.calls[index] = call
        if piece.arguments:
            self._emit(FunctionCallDelta(self.response_id, call, piece.arguments))

    async def _run(self) -> None:
        current_ticket.set(self.ticket)  # this task's context only; the stages' tasks inherit it
        try:
            try:
                self.input = await self._user_input
            finally:
                self.input_ready.set()
            self.t_input = time.monotonic()
            messages = self._build_messages(self.input)
            pieces = self._llm.stream(messages, **self._tool_args, **self._limit_args)
            audio = self._decoder.synthesize(self._text(pieces))
            try:
                async with asyncio.timeout(None) as self._tts_deadline:
                    async for chunk in audio:
                        self._deadline(armed=False)  # a held reply waits here: not the decoder's time
                        await self._may_generate.wait()
                        if self.t_first_audio is None:
                            self.t_first_audio = time.monotonic()
                        if self._out is None:
                            self._held.append(chunk)
                        else:
                            self._write(chunk)
                        self._deadline(armed=True)
            except TimeoutError:
                if self._tts_deadline is not None and self._tts_deadline.expired():
                    raise StageTimeout("speech synthesis", self._tts_timeout_s or 0) from None
                raise
            finally:
                self._tts_deadline = None
                await audio.aclose()  # type: ignore[attr-defined]
            self.t_audio_done = time.monotonic()
            self.generated.set()
            await self._released.wait()
            self._emit(AudioDone(self.response_id, self.item_id))
            while True:  # a hold() (possible interruption) while draining waits for resume()
                await self._released.wait()
                out = self._out
                assert out is not None
                await out.drain()
                if self._out is out:
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failing stage ends this reply, never the session
            log.warning("reply %s failed: %r", self.response_id, exc)
            self.error = exc
            self.generated.set()
            await self._released.wait()  # a failed speculation reports only if it is played
        finally:
            self.generated.set()
        self._on_finished(self)
