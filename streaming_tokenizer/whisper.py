"""Whisper (faster-whisper, CTranslate2 int8 on CPU) as the embedded stack's tokenizer.

Whisper is not a streaming model, so push() only buffers; finalize() transcribes the turn so far.
It is called at each pause and again at the end of the turn, usually on the same audio (the
controller holds back pause frames), so a result is cached by the amount of audio it covers, and
concurrent calls for the same audio share one job.

Speed: Whisper's encoder always sees a 30 s window, padded with silence, which is most of the
cost for a 2-5 s turn. CTranslate2 accepts a shorter window, so turns up to ~28 s are encoded in a
window of max(encoder_window_s, speech + 2 s); on our test sentences that is ~5x faster at the
same WER (docs/models.md). A short window occasionally makes the greedy decoder loop (repeat the
sentence); a loop is detected (a repeated token trigram, or hitting the token budget) and that
turn is re-done with faster-whisper's own transcribe() on the full window.
"""
from __future__ import annotations

import asyncio
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from streaming_tokenizer.base import UserInput
from vad.base import SAMPLE_RATE

log = logging.getLogger(__name__)

_HOP = 160  # samples per mel frame
_FULL_FRAMES = 3000  # Whisper's 30 s window
_MARGIN_FRAMES = 200  # silence after the speech, so the decoder sees the utterance end
_ROUND_FRAMES = 500  # window sizes in 5 s steps


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field("whisper-base", description="an embedded model name, or a CTranslate2 model dir")
    language: str | None = Field(None, description="ISO code such as 'en'; null: detect per turn")
    compute_type: str = "int8"
    cpu_threads: int = Field(2, ge=1, description="CTranslate2 threads per transcription")
    workers: int = Field(1, ge=1, le=2, description="transcriptions running at once (server-wide)")
    encoder_window_s: float | None = Field(
        10.0, ge=1.0, le=30.0,
        description="shortest encoder window; null: always the full 30 s (faster-whisper transcribe)")


class WhisperEngine:
    """The per-server model and its thread pool. transcribe() is blocking: run it in `executor`."""

    def __init__(self, model_dir: Path, opts: Options) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self.model = WhisperModel(str(model_dir), device="cpu", compute_type=opts.compute_type,
                                  cpu_threads=opts.cpu_threads, num_workers=opts.workers)
        self.executor = ThreadPoolExecutor(max_workers=opts.workers, thread_name_prefix="whisper")
        self.window_frames = None if opts.encoder_window_s is None else int(opts.encoder_window_s * 100)
        multilingual = self.model.model.is_multilingual
        self._tokenizer = Tokenizer(self.model.hf_tokenizer, multilingual, "transcribe",
                                    "en" if multilingual else None)
        self._suppress = list(get_suppressed_tokens(self._tokenizer, [-1]))
        self.window_runs = 0  # how often each path ran, for tests and benchmarks
        self.full_runs = 0

    def transcribe(self, audio: np.ndarray, language: str | None) -> tuple[str, str | None]:
        """Text and language of float32 16 kHz mono audio."""
        frames = len(audio) // _HOP
        if self.window_frames is not None and frames + _MARGIN_FRAMES <= _FULL_FRAMES:
            text, language = self._transcribe_window(audio, frames, language)
            if text is not None:
                return text, language
        self.full_runs += 1
        segments, info = self.model.transcribe(
            audio, language=language, beam_size=1, vad_filter=False, without_timestamps=True,
            condition_on_previous_text=False)
        text = " ".join(seg.text.strip() for seg in segments)  # the generator runs the decoder
        return text.strip(), info.language

    def _transcribe_window(self, audio: np.ndarray, frames: int,
                           language: str | None) -> tuple[str | None, str | None]:
        """(None, language) when the decoder looped: the caller redoes it on the full window."""
        from faster_whisper.transcribe import get_ctranslate2_storage

        self.window_runs += 1
        window = math.ceil((frames + _MARGIN_FRAMES) / _ROUND_FRAMES) * _ROUND_FRAMES
        window = min(_FULL_FRAMES, max(self.window_frames, window))
        padded = np.zeros(window * _HOP, np.float32)
        padded[: len(audio)] = audio
        features = self.model.feature_extractor(padded)[:, :window]
        encoded = self.model.model.encode(get_ctranslate2_storage(features[None]))
        tok = self._tokenizer
        if not self.model.model.is_multilingual:
            prompt, language = [tok.sot], "en"
        else:
            if language is None:
                best_token, _ = self.model.model.detect_language(encoded)[0][0]
                language = best_token[2:-2]  # "<|en|>" → "en"
            prompt = [tok.sot, self.language_token(language), tok.transcribe]
        budget = token_budget(len(audio) / SAMPLE_RATE)
        # CTranslate2 stops well short of max_length (it counts more than the new tokens), so
        # give it room past the budget and call anything longer than the budget a loop.
        max_length = min(self.model.max_length, 2 * (len(prompt) + budget) + 8)
        result = self.model.model.generate(
            encoded, [prompt + [tok.no_timestamps]], beam_size=1, max_length=max_length,
            suppress_blank=True, suppress_tokens=self._suppress)[0]
        ids = [t for t in result.sequences_ids[0] if t < tok.eot]
        if len(ids) > budget or _repeats(ids):
            log.debug("short-window decode looped (%d tokens); using the full window", len(ids))
            return None, language
        return tok.decode(ids).strip(), language

    def language_token(self, language: str) -> int:
        token = self._tokenizer.tokenizer.token_to_id(f"<|{language}|>")
        if token is None:
            raise ValueError(f"Whisper has no language {language!r}")
        return token

    async def close(self) -> None:
        await asyncio.to_thread(self.executor.shutdown, wait=True, cancel_futures=True)


def token_budget(seconds: float) -> int:
    """More text tokens than anyone says in `seconds`: more means the decoder is looping."""
    return 12 + int(10 * seconds)


def _repeats(ids: list[int], n: int = 3) -> bool:
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return len(set(grams)) < len(grams)


class WhisperTokenizer:
    """Per session: buffers the turn's audio; finalize() transcribes it, cached by length."""

    def __init__(self, engine: WhisperEngine, language: str | None) -> None:
        self._engine = engine
        self._language = language
        self._chunks: list[np.ndarray] = []
        self._samples = 0
        self._turn = 0  # bumped by reset(): results of an earlier turn are never cached or shared
        self._cached: tuple[tuple[int, int], UserInput] | None = None
        self._jobs: dict[tuple[int, int], asyncio.Future[UserInput]] = {}
        self.transcriptions = 0  # model runs started by this session

    def push(self, frame: np.ndarray) -> None:
        self._chunks.append(np.array(frame, dtype=np.int16))  # a copy: callers may reuse buffers
        self._samples += len(frame)

    async def finalize(self) -> UserInput:
        key = (self._turn, self._samples)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        if self._samples == 0:
            return UserInput(text="", speech_seconds=0.0, language=self._language)
        job = self._jobs.get(key)
        if job is None:
            job = asyncio.ensure_future(self._transcribe(key, self._snapshot()))
            job.add_done_callback(_retrieve)
            self._jobs[key] = job
        # shield: one caller giving up (a discarded speculation) must not cancel the others' job
        return await asyncio.shield(job)

    def reset(self) -> None:
        self._chunks.clear()
        self._samples = 0
        self._turn += 1
        self._cached = None
        self._jobs.clear()

    def _snapshot(self) -> np.ndarray:
        audio = np.concatenate(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
        self._chunks = [audio]  # later snapshots concatenate less
        return audio.astype(np.float32) / 32768.0

    async def _transcribe(self, key: tuple[int, int], audio: np.ndarray) -> UserInput:
        self.transcriptions += 1
        loop = asyncio.get_running_loop()
        try:
            text, language = await loop.run_in_executor(
                self._engine.executor, self._engine.transcribe, audio, self._language)
        finally:
            self._jobs.pop(key, None)
        result = UserInput(text=text, speech_seconds=len(audio) / SAMPLE_RATE, language=language)
        if key[0] == self._turn and (self._cached is None or self._cached[0][1] <= key[1]):
            self._cached = (key, result)
        return result


def _retrieve(job: asyncio.Future) -> None:
    """Mark a failure as seen when every caller had already gone (avoids a noisy asyncio log)."""
    if not job.cancelled():
        job.exception()


class WhisperTokenizerFactory:
    def __init__(self, engine: WhisperEngine, language: str | None) -> None:
        self.engine = engine
        self.language = language

    def create(self) -> WhisperTokenizer:
        return WhisperTokenizer(self.engine, self.language)

    async def close(self) -> None:
        await self.engine.close()


def resolve_model(name: str, cache_dir: Path) -> Path:
    """An embedded model name (assembled on demand) or an existing model directory."""
    from realtime import assets
    from realtime.config import ConfigError

    if name in assets.ASSETS:
        return assets.ensure(name, cache_dir)
    path = Path(name).expanduser()
    if not (path / "model.bin").is_file():
        known = ", ".join(n for n in assets.ASSETS if n.startswith("whisper"))
        raise ConfigError(f"tokenizer.model: {name!r} is neither an embedded model ({known}) "
                                "nor a CTranslate2 model directory")
    return path


def build(options: dict, env) -> WhisperTokenizerFactory:
    from realtime.config import ConfigError, validate_options

    opts = validate_options(Options, "tokenizer", options)
    engine = WhisperEngine(resolve_model(opts.model, env.cache_dir), opts)
    if opts.language is not None and engine.model.model.is_multilingual:
        try:
            engine.language_token(opts.language)
        except ValueError as exc:
            engine.executor.shutdown(wait=False)
            raise ConfigError(f"tokenizer.language: {exc}") from None
    return WhisperTokenizerFactory(engine, opts.language)
