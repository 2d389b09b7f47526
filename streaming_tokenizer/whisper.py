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
turn is re-done in the same window with repeated 4-grams forbidden (and cut at the budget). The
full window (faster-whisper's own transcribe()) is only for turns too long for a short one.

Capacity: every session's transcriptions queue in the scheduler's "asr" lane (core/scheduler.py:
the end of a turn before a speculation, a speculation before a warm-up); those waiting with the
same encoder window size run as one CTranslate2 batch, so N callers pausing together cost one
encoder call and one batched greedy decode instead of N queued ones.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from core.blas import one_blas_thread
from core.scheduler import Job, Scheduler, ticket_now
from core.wedge import WedgeGuard, abandon
from streaming_tokenizer.base import UserInput
from streaming_tokenizer.whisper_text import pick_language, script_converter, token_budget
from streaming_tokenizer.whisper_text import repeats as _repeats  # a name the tests patch
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
    # Whisper base detects Mandarin spoken as separate syllables, or a short noisy turn, as Thai,
    # Vietnamese, Korean...; the decoder then loops in that language and the retry costs a second
    # decode (2 s of ASR on the bench's Mandarin turns). Detecting only among the languages the
    # agent can answer in is both right and faster.
    languages: list[str] | None = Field(
        None, min_length=1,
        description="with language null: detect only among these ISO codes (e.g. [en, zh]); null: any of Whisper's")
    compute_type: str = "int8"
    # 1, not 2: greedy decoding is ~10 ms per token of small ops, and waking a second (sleeping,
    # OMP_WAIT_POLICY=PASSIVE) thread at each op costs more than it saves: 1 thread is as fast or
    # faster (5.9 s of speech: 0.43–0.49 vs 0.50–0.52 s) on 15–25 % less CPU, leaving the other
    # core to the LLM and TTS (docs/benchmarks.md, "One Whisper thread").
    cpu_threads: int = Field(1, ge=1, description="CTranslate2 threads per transcription")
    # The encoder is one big matrix product per layer, where a second thread does pay (10 s window:
    # see docs/benchmarks.md "A two-thread encoder when alone"); but a second core is free only
    # when no other session has model work. So a second copy of the model with this many threads
    # encodes a lone transcription while no other session is at work; decoding stays on cpu_threads.
    encoder_threads: int = Field(2, ge=1, le=8, description="CTranslate2 threads for the encoder while no other "
                                                            "session has model work (a second copy of the "
                                                            "model, ~80 MB); <= cpu_threads: off")
    # "No other session at work right now" was true for ~30 % of transcriptions at 4 callers
    # (between their turns), whose next work then met a busy second core: ask for a quiet while.
    solo_idle_s: float = Field(3.0, ge=0, le=60, description="the two-thread encoder runs only when no other "
                                                              "session has had model work for this long")
    workers: int = Field(1, ge=1, le=2, description="batches running at once (server-wide)")
    max_batch: int = Field(8, ge=1, le=32, description="transcriptions of one encoder window size run as one "
                                                       "batch (all sessions)")
    chinese_script: str | None = Field(
        "simplified", pattern="^(simplified|traditional)$",
        description="write Chinese transcripts in this script (OpenCC); null: as Whisper writes them "
                    "(Whisper base mixes traditional characters into Mandarin: 秋風 for 秋风)")
    wedged_after_s: float | None = Field(
        10.0, ge=1.0, description="a batch still running after this (plus 1 s per second of its longest turn) "
                                  "is given up as wedged and redone on a new worker thread with a new model "
                                  "copy (core/wedge.py); null: wait forever")
    encoder_window_s: float | None = Field(
        10.0, ge=1.0, le=30.0,
        description="shortest encoder window; null: always the full 30 s (faster-whisper transcribe)")


class WhisperEngine:
    """The per-server model. Transcriptions of all sessions queue in the scheduler's "asr" lane,
    which runs those of one encoder window size as one CTranslate2 batch (transcribe_batch)."""

    def __init__(self, model_dir: Path, opts: Options, scheduler: Scheduler | None = None) -> None:
        # CTranslate2's OpenMP (libgomp) threads spin-wait after each parallel region: on a 2-core
        # box that burns the core the LLM and TTS need. Make them sleep at once. libgomp reads
        # this when it is loaded, i.e. at the first import of ctranslate2.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self.model_dir, self.opts = model_dir, opts
        self._load_models()
        self.solo_idle_s = opts.solo_idle_s
        self.executor = ThreadPoolExecutor(max_workers=opts.workers, thread_name_prefix="whisper")
        self.scheduler = scheduler or Scheduler()
        guard = None if opts.wedged_after_s is None else WedgeGuard(self.time_limit, self.replace_worker)
        self.lane = self.scheduler.lane("asr", opts.workers, executor=self.executor, guard=guard,
                                        batch_fn=self.transcribe_batch, max_batch=opts.max_batch)
        self.window_frames = None if opts.encoder_window_s is None else int(opts.encoder_window_s * 100)
        multilingual = self.model.model.is_multilingual
        self._tokenizer = Tokenizer(self.model.hf_tokenizer, multilingual, "transcribe",
                                    "en" if multilingual else None)
        self._suppress = list(get_suppressed_tokens(self._tokenizer, [-1]))
        self._script = script_converter(opts.chinese_script)
        self.candidates = set(opts.languages or ())
        one_blas_thread()  # the features' matrix product, from several threads (core/blas.py; also in Ray)
        self.window_runs = 0  # how often each path ran, for tests and benchmarks
        self.loop_retries = 0
        self.full_runs = 0
        self.solo_encodes = 0

    def _load_models(self) -> None:
        from faster_whisper import WhisperModel

        opts, path = self.opts, str(self.model_dir)
        self.model = WhisperModel(path, device="cpu", compute_type=opts.compute_type,
                                  cpu_threads=opts.cpu_threads, num_workers=opts.workers)
        self.solo_encoder = None
        if opts.encoder_threads > opts.cpu_threads:
            self.solo_encoder = WhisperModel(path, device="cpu", compute_type=opts.compute_type,
                                             cpu_threads=opts.encoder_threads).model

    def time_limit(self, items: Sequence[tuple[np.ndarray, str | None]]) -> float:
        """Longer than any healthy batch of these takes: `wedged_after_s`, plus 1 s per second of
        the longest turn (a full-window run with temperature fallback) and 0.5 s per extra turn."""
        longest = max(len(audio) for audio, _ in items) / SAMPLE_RATE
        return float(self.opts.wedged_after_s or 0.0) + longest + 0.5 * (len(items) - 1)

    def replace_worker(self) -> ThreadPoolExecutor:
        """A batch never returned (core/wedge.py): a new thread, which first loads a new copy of
        the model (the old copy may be what hangs; the wedged thread keeps it)."""
        wedged, self.executor = self.executor, ThreadPoolExecutor(self.opts.workers, thread_name_prefix="whisper")
        self.executor.submit(self._load_models).add_done_callback(_log_failure)
        abandon(wedged)  # its thread ends if the call ever returns
        return self.executor

    def window_of(self, samples: int) -> int:
        """The encoder window (mel frames) a turn of `samples` is transcribed in; 0: the full-window
        path (faster-whisper's transcribe). Jobs of one window size can share a batch."""
        frames = samples // _HOP
        if self.window_frames is None or frames + _MARGIN_FRAMES > _FULL_FRAMES:
            return 0
        window = math.ceil((frames + _MARGIN_FRAMES) / _ROUND_FRAMES) * _ROUND_FRAMES
        return min(_FULL_FRAMES, max(self.window_frames, window))

    def transcribe(self, audio: np.ndarray, language: str | None) -> tuple[str, str | None]:
        """Text and language of float32 16 kHz mono audio (one turn, blocking)."""
        return self.transcribe_batch([(audio, language)])[0]

    def transcribe_batch(self, items: Sequence[tuple[np.ndarray, str | None]]) -> list[tuple[str, str | None]]:
        """Several turns of one window size (window_of) at once: one encoder and one decoder
        call for the batch; a turn whose short-window decode loops is redone alone on the full
        window. Greedy decoding makes each result the same as transcribing it alone."""
        window = self.window_of(len(items[0][0]))
        results: list[tuple[str | None, str | None]] = [(None, lang) for _, lang in items]
        if window:
            assert all(self.window_of(len(a)) == window for a, _ in items), "one window size per batch"
            results = self._transcribe_window(items, window)
            redo = [i for i, (text, _) in enumerate(results) if text is None]
            if redo:
                # Redo a looping decode in the same window with repeats forbidden: ~0.3 s, where the
                # full 30 s window (with language detection) held the one ASR worker, and every
                # caller's turn behind it, for ~5 s (the p95 spikes of docs/benchmarks.md).
                self.loop_retries += len(redo)
                self.lane.counters["loop_retries"] = self.loop_retries
                again = self._transcribe_window([items[i] for i in redo], window, no_repeat_ngram=4)
                for i, result in zip(redo, again):
                    results[i] = result
        done = [(text, lang) if text is not None else self._transcribe_full(audio, lang)
                for (audio, _), (text, lang) in zip(items, results)]
        return [(self._script(text) if lang == "zh" else text, lang) for text, lang in done]

    def _transcribe_full(self, audio: np.ndarray, language: str | None) -> tuple[str, str | None]:
        self.full_runs += 1
        # Visible in /metrics: a full-window run holds the one worker for seconds.
        self.lane.counters["full_window_runs"] = self.full_runs
        if language is None and self.candidates and self.model.model.is_multilingual:
            language = pick_language(self.model.detect_language(audio)[2], self.candidates)
        segments, info = self.model.transcribe(
            audio, language=language, beam_size=1, vad_filter=False, without_timestamps=True,
            condition_on_previous_text=False)
        text = " ".join(seg.text.strip() for seg in segments)  # the generator runs the decoder
        return text.strip(), info.language

    def _transcribe_window(self, items: Sequence[tuple[np.ndarray, str | None]], window: int,
                           no_repeat_ngram: int = 0) -> list[tuple[str | None, str | None]]:
        """(None, language) for a turn whose decoder looped: the caller redoes it with
        `no_repeat_ngram`, and then a result past the token budget is cut at the budget."""
        from faster_whisper.transcribe import get_ctranslate2_storage

        self.window_runs += len(items)
        features = np.stack([self._features(audio, window) for audio, _ in items])
        encoded = self._encoder(len(items)).encode(get_ctranslate2_storage(features))
        tok = self._tokenizer
        languages = [lang for _, lang in items]
        if not self.model.model.is_multilingual:
            languages = ["en"] * len(items)
            prompts = [[tok.sot, tok.no_timestamps]] * len(items)
        else:
            if any(lang is None for lang in languages):
                detected = self.model.model.detect_language(encoded)
                languages = [lang or pick_language(ranked, self.candidates) for lang, ranked in zip(languages, detected)]
            prompts = [[tok.sot, self.language_token(lang), tok.transcribe, tok.no_timestamps] for lang in languages]
        budgets = [token_budget(len(audio) / SAMPLE_RATE) for audio, _ in items]
        # CTranslate2 stops well short of max_length (it counts more than the new tokens), so
        # give it room past the budget and call anything longer than the budget a loop.
        max_length = min(self.model.max_length, 2 * (len(prompts[0]) + max(budgets)) + 8)
        decoded = self.model.model.generate(encoded, prompts, beam_size=1, max_length=max_length,
                                            suppress_blank=True, suppress_tokens=self._suppress,
                                            no_repeat_ngram_size=no_repeat_ngram)
        results: list[tuple[str | None, str | None]] = []
        for result, budget, language in zip(decoded, budgets, languages):
            ids = [t for t in result.sequences_ids[0] if t < tok.eot]
            if no_repeat_ngram:
                results.append((tok.decode(ids[:budget]).strip(), language))
            elif len(ids) > budget or _repeats(ids):
                log.debug("short-window decode looped (%d tokens); redoing it without repeats", len(ids))
                results.append((None, language))
            else:
                results.append((tok.decode(ids).strip(), language))
        return results

    def _encoder(self, batch: int):
        """The two-thread copy for one transcription while no other session has model work queued
        or running (its own turn-model or LLM work may run beside it); else the one-thread model.
        Both load the same weights, so the encoder output, and the transcript, are the same."""
        if (self.solo_encoder is not None and batch == 1
                and len(self.scheduler.sessions_at_work(self.solo_idle_s)) <= 1):
            self.solo_encodes += 1
            self.lane.counters["solo_encodes"] = self.solo_encodes
            return self.solo_encoder
        return self.model.model

    def _features(self, audio: np.ndarray, window: int) -> np.ndarray:
        padded = np.zeros(window * _HOP, np.float32)
        padded[: len(audio)] = audio
        return self.model.feature_extractor(padded)[:, :window]

    def check_language(self, language: str) -> None:
        if not self.model.model.is_multilingual:
            if language != "en":
                raise ValueError(f"this Whisper model is English-only, not {language!r}")
            return
        self.language_token(language)

    def language_token(self, language: str) -> int:
        token = self._tokenizer.tokenizer.token_to_id(f"<|{language}|>")
        if token is None:
            raise ValueError(f"Whisper has no language {language!r}")
        return token

    async def close(self) -> None:
        await asyncio.to_thread(self.executor.shutdown, wait=True, cancel_futures=True)


def _log_failure(done) -> None:
    if done.exception() is not None:
        log.error("reloading Whisper for a new worker failed; the old copy stays in use", exc_info=done.exception())


class WhisperTokenizer:
    """Per session: buffers the turn's audio; finalize() transcribes it, cached by length.

    Concurrent finalize() calls for the same audio (a speculation's and the end of turn's) share
    one job in the "asr" lane, which runs for the most urgent of them (core.scheduler)."""

    def __init__(self, engine: WhisperEngine, language: str | None) -> None:
        self._engine = engine
        self._language = self._default_language = language
        self._chunks: list[np.ndarray] = []
        self._samples = 0
        self._turn = 0  # bumped by reset(): results of an earlier turn are never cached or shared
        self._cached: tuple[tuple[int, int], UserInput] | None = None
        self._jobs: dict[tuple[int, int], Job] = {}
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
        ticket = ticket_now()
        lane = self._engine.lane
        job = self._jobs.get(key)
        if job is not None and _failed(job):  # dropped (all its waiters left) or failed: anew
            job = None
        if job is None:
            audio = self._snapshot()
            job = self._jobs[key] = lane.enqueue((audio, self._language), ticket,
                                                  group=self._engine.window_of(len(audio)))
            self.transcriptions += 1
        else:
            job.add(ticket)
        text, language = await lane.result(job, ticket)
        result = UserInput(text=text, speech_seconds=key[1] / SAMPLE_RATE, language=language)
        if key[0] == self._turn and (self._cached is None or self._cached[0][1] <= key[1]):
            self._cached = (key, result)
        return result

    def set_language(self, language: str | None) -> None:
        """The caller's language from now on (None: the configured one); a transcript cached for
        the other language is not reused."""
        if language is not None:
            self._engine.check_language(language)  # ValueError: nothing changes
        self._language = language if language is not None else self._default_language
        self._cached = None
        self._jobs.clear()

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


def _failed(job: Job) -> bool:
    for fut in (job.granted, job.outcome):
        if fut.done() and fut.exception() is not None:
            return True
    return False


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
    from core import assets
    from core.config import ConfigError

    if name in assets.ASSETS:
        return assets.ensure(name, cache_dir)
    path = Path(name).expanduser()
    if not (path / "model.bin").is_file():
        known = ", ".join(n for n in assets.ASSETS if n.startswith("whisper"))
        raise ConfigError(f"tokenizer.model: {name!r} is neither an embedded model ({known}) "
                                "nor a CTranslate2 model directory")
    return path


def build(options: dict, env) -> WhisperTokenizerFactory:
    from core.config import ConfigError, validate_options

    opts = validate_options(Options, "tokenizer", options)
    engine = WhisperEngine(resolve_model(opts.model, env.cache_dir), opts, env.scheduler)
    for key, codes in (("language", [opts.language] if opts.language else []), ("languages", opts.languages or [])):
        try:
            for code in codes:
                engine.check_language(code)
        except ValueError as exc:
            engine.executor.shutdown(wait=False)
            raise ConfigError(f"tokenizer.{key}: {exc}") from None
    return WhisperTokenizerFactory(engine, opts.language)
