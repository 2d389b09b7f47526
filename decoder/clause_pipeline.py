"""The streaming part of a clause-by-clause TTS decoder, shared by piper in this process
(decoder/piper_tts.py) and piper on the model tier (decoder/ray_piper.py).

synthesize() is a three-stage pipeline per reply, so the first clause is heard before the LLM has
finished writing:  text pieces -> clauses (reader task) -> audio (synthesis task: `span_audio`, the
only model call) -> ~200 ms chunks (the generator). While clause k is synthesized the reader
already cuts clause k+1, and while clause k is being sent clause k+1 is synthesized (the audio
queue holds a few spans of look-ahead).

Each span's model work tells the scheduler when its audio is first needed (`core.scheduler.
needed_at`): the first span now, the next one when the audio made so far would have played out
from the first span on, less the time the last span took to come (under load a span takes
longer: the next one is asked for sooner, so the audio does not run dry). A long reply's later
sentences then wait behind another caller's first words instead of ahead of them (a 2-thread TTS
lane shared by all calls).

A subclass provides `span_audio(clause)` (int16 arrays at `sample_rate`), `sample_rate`, `chunk_s`
and `options` with `first_clause_words` and `lookahead`.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import numpy as np

from core.scheduler import WorkDropped, needed_at
from decoder.audio_chunks import aclose_quietly, chunked, trim_leading_silence, trim_trailing_silence
from decoder.base import AudioChunk
from decoder.clauses import clauses

log = logging.getLogger(__name__)
_END = object()  # queue sentinel: the stream is complete
MAX_SPAN_S = 2.0  # a span's time to come counts up to this (it may include a wait for the LLM)
_PUNCTUATION = tuple(".!?,;:…。！？，；：、")


class ClausePipeline:
    options: Any
    sample_rate: int
    chunk_s: float

    def span_audio(self, clause: str) -> AsyncIterator[np.ndarray]:
        raise NotImplementedError

    async def synthesize(self, text: AsyncIterator[str]) -> AsyncIterator[AudioChunk]:
        clause_q: asyncio.Queue = asyncio.Queue()
        audio_q: asyncio.Queue = asyncio.Queue(maxsize=self.options.lookahead)
        reader = asyncio.create_task(self._read(text, clause_q, self.options.first_clause_words), name="tts-read")
        speaker = asyncio.create_task(self._speak(clause_q, audio_q), name="tts-speak")
        try:
            while (item := await audio_q.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                label, pcm = item
                for chunk in chunked(pcm, self.sample_rate, self.chunk_s, label):
                    yield chunk
        finally:
            # Cancelled (aclose, task cancel) or done: stop both stages, then close the LLM text.
            for task in (reader, speaker):
                task.cancel()
            await asyncio.gather(reader, speaker, return_exceptions=True)
            await aclose_quietly(text)

    @staticmethod
    async def _read(text: AsyncIterator[str], clause_q: asyncio.Queue, first_words: int) -> None:
        try:
            async with aclosing(clauses(text, first_words=first_words)) as cut:
                async for clause in cut:
                    clause_q.put_nowait(clause)
            clause_q.put_nowait(_END)
        except Exception as exc:  # the LLM failed: the reply fails with its error
            clause_q.put_nowait(exc)

    async def _speak(self, clause_q: asyncio.Queue, audio_q: asyncio.Queue) -> None:
        first = True
        t_first = t_last = 0.0  # when the first span came; when the last one did
        made_s = 0.0  # the audio made since the first span
        try:
            while (clause := await clause_q.get()) is not _END:
                if isinstance(clause, BaseException):
                    await audio_q.put(clause)
                    return
                label = clause  # the clause's text rides on its first chunk only
                # A clause cut after its first words (no punctuation) goes on in the next one: no
                # sentence pause after it. Its last piece is held until we know it is the last.
                mid_sentence = not clause.endswith(_PUNCTUATION)
                held = None
                async with aclosing(self.span_audio(clause)) as spans:  # closed now if cancelled
                    async for pcm in spans:
                        now = time.monotonic()
                        if first:  # the voice's lead-in silence before the reply is only latency
                            pcm, first = trim_leading_silence(pcm, self.sample_rate), False
                            t_first = t_last = now
                        took, t_last = min(now - t_last, MAX_SPAN_S), now
                        made_s += len(pcm) / self.sample_rate
                        needed_at.set(t_first + made_s - took)  # the next span's work (this task's context)
                        if mid_sentence:  # hold the last piece back: its sentence pause goes
                            pcm, held = held, pcm
                            if pcm is None:
                                continue
                        await audio_q.put((label, pcm))
                        label = ""
                if held is not None:
                    await audio_q.put((label, trim_trailing_silence(held, self.sample_rate)))
            await audio_q.put(_END)
        except WorkDropped as exc:  # the reply is being cancelled (Reply.cancel drops its ticket first)
            await audio_q.put(exc)
        except Exception as exc:
            log.exception("synthesis failed")
            await audio_q.put(exc)
