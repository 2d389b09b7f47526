"""One caller's streaming Step-Audio tokenizer, and the per-server factory that shares the models.

push() only buffers (it runs on the event loop for every 20 ms frame). Once a linguistic chunk
(240 ms) has gathered, a background task hands the new audio to the model thread, which
advances both streams. finalize() waits for that, then computes only the partial tail (on
copies of the stream state), so calling it at a pause and again at the end of the turn costs
one tail each, and calling it again with no new audio costs nothing.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import numpy as np
import soxr

from core.scheduler import Lane
from streaming_tokenizer.base import UserInput
from streaming_tokenizer.step_audio.interleave import interleave
from streaming_tokenizer.step_audio.linguistic import LinguisticModel, LinguisticState
from streaming_tokenizer.step_audio.semantic import SemanticModel, SemanticState

log = logging.getLogger(__name__)
SAMPLE_RATE = 16_000


def to_mono_float(samples: np.ndarray) -> np.ndarray:
    """int16 or float, (n,) or (n, channels) → float32 mono in [-1, 1]."""
    x = np.asarray(samples)
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float32) / 32768.0
    x = x.astype(np.float32, copy=False)
    return x.mean(axis=1) if x.ndim == 2 else x


@dataclass
class StepAudioModels:
    linguistic: LinguisticModel
    semantic: SemanticModel

    def tokenize(self, samples: np.ndarray) -> tuple[list[int], list[int]]:
        """Whole-utterance codes (linguistic, semantic) on the same chunking as the stream."""
        samples = to_mono_float(samples)
        return self.linguistic.tokenize(samples), self.semantic.tokenize(samples)


@dataclass
class _Streams:
    linguistic: LinguisticState
    semantic: SemanticState
    samples: int = 0  # samples handed to the model thread
    generation: int = 0  # which reset() made it


class StepAudioTokenizer:
    def __init__(self, models: StepAudioModels, lane: Lane, transcriber=None) -> None:
        self.models = models
        self._lane = lane  # the scheduler's "tokenizer" lane: one model thread for all sessions
        self._transcriber = transcriber  # streaming_tokenizer.step_audio.transcript.*
        self._asr_session = transcriber.create_session() if transcriber is not None else None
        self._streams: _Streams | None = None
        self._generation = 0
        self._lock = asyncio.Lock()
        self._work: asyncio.Task | None = None
        self._resampler: tuple[int, soxr.ResampleStream] | None = None
        self.reset()

    # -- input ---------------------------------------------------------------------------------

    def push(self, frame: np.ndarray) -> None:
        """A 20 ms frame of 16 kHz mono int16 (the controller's format)."""
        self._append(to_mono_float(frame))
        if self._asr_session is not None:
            self._asr_session.push(frame)

    def push_audio(self, samples: np.ndarray, sample_rate: int) -> None:
        """Any rate, mono or (n, channels), int16 or float: resampled to 16 kHz as it streams."""
        mono = to_mono_float(samples)
        if sample_rate != SAMPLE_RATE:
            if self._resampler is None or self._resampler[0] != sample_rate:
                self._resampler = (sample_rate, soxr.ResampleStream(sample_rate, SAMPLE_RATE, 1, dtype="float32"))
            mono = self._resampler[1].resample_chunk(mono)
        if not len(mono):
            return
        self._append(mono)
        if self._asr_session is not None:
            pcm = np.clip(mono * 32768.0, -32768, 32767).astype(np.int16)
            for i in range(0, len(pcm), 320):
                self._asr_session.push(pcm[i:i + 320])

    def _append(self, samples: np.ndarray) -> None:
        self._inbox.append(samples)
        self._inbox_samples += len(samples)
        if self._inbox_samples >= self.models.linguistic.chunk_samples and (self._work is None or self._work.done()):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a synchronous caller): finalize() does the work
                return
            self._work = loop.create_task(self._drain())

    def reset(self) -> None:
        if self._work is not None and not self._work.done():
            self._work.cancel()
        self._work = None
        # New state objects: a job still running on the model thread updates the old ones only.
        self._generation += 1
        self._streams = _Streams(self.models.linguistic.new_state(), self.models.semantic.new_state(),
                                 generation=self._generation)
        self._inbox: list[np.ndarray] = []
        self._inbox_samples = 0
        self._final: tuple[tuple[int, int], tuple[int, ...]] | None = None
        self._text: tuple[tuple[int, ...], str] | None = None
        self._error: Exception | None = None
        self._resampler = None
        if self._asr_session is not None:
            self._asr_session.reset()

    # -- model work ----------------------------------------------------------------------------

    def _take_inbox(self) -> np.ndarray:
        chunk = np.concatenate(self._inbox) if self._inbox else np.zeros(0, np.float32)
        self._inbox, self._inbox_samples = [], 0
        return chunk

    @staticmethod
    def _feed(models: StepAudioModels, streams: _Streams, samples: np.ndarray) -> None:
        models.linguistic.feed(streams.linguistic, samples)
        models.semantic.feed(streams.semantic, samples)
        streams.samples += len(samples)

    @staticmethod
    def _finish(models: StepAudioModels, streams: _Streams) -> list[int]:
        ling = streams.linguistic.codes + models.linguistic.finish(streams.linguistic)
        sem = streams.semantic.codes + models.semantic.finish(streams.semantic)
        return interleave(ling, sem)

    async def _drain(self) -> None:
        async with self._lock:
            # Loop: frames pushed while the model thread was busy are picked up next round.
            while self._inbox_samples >= self.models.linguistic.chunk_samples:
                streams, samples = self._streams, self._take_inbox()
                try:
                    await self._lane.run(self._feed, self.models, streams, samples)
                except Exception as exc:  # reported by the turn's finalize(), not lost in a task
                    log.exception("step-audio tokenizer failed on streamed audio")
                    self._error = exc
                    return

    async def _tokens(self) -> tuple[tuple[int, ...], int]:
        """(audio tokens, samples) of everything pushed so far; memoized until more audio comes."""
        async with self._lock:
            if self._error is not None:
                raise self._error
            streams, samples = self._streams, self._take_inbox()
            if len(samples):
                await self._lane.run(self._feed, self.models, streams, samples)
            key = (streams.generation, streams.samples)
            if self._final is None or self._final[0] != key:
                tokens = tuple(await self._lane.run(self._finish, self.models, streams))
                self._final = (key, tokens)
            return self._final[1], streams.samples

    async def finalize(self) -> UserInput:
        asr = asyncio.ensure_future(self._asr_session.finalize()) if self._asr_session is not None else None
        try:
            tokens, total = await self._tokens()
            text, language = "", None
            if asr is not None:
                user = await asr
                text, language = user.text, user.language
            elif self._transcriber is not None and tokens:
                if self._text is None or self._text[0] != tokens:
                    self._text = (tokens, await self._transcriber.transcribe(tokens))
                text = self._text[1]
        except BaseException:
            if asr is not None:
                asr.cancel()
            raise
        return UserInput(text=text, audio_tokens=tokens, speech_seconds=total / SAMPLE_RATE, language=language)
