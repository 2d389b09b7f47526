"""Piper (VITS, ONNX) as the embedded decoder: en_US-joe-medium, 22050 Hz.

synthesize() (decoder/clause_pipeline.py) cuts the LLM's text into clauses and speaks each with
span_audio(), one sentence per job in the scheduler's "tts" lane, so the first clause is heard
before the LLM has finished writing. The same class runs inside the model tier's TTS replicas
(model_tier/deployments.py), where span_audio() is what a remote call streams back.

The voice is English only; clauses in a CJK script go to espeak-ng (the fallback), resampled to the
voice's rate so one reply has one rate.
"""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from pathlib import Path
from typing import Literal

import numpy as np
import soxr
from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.scheduler import Scheduler
from decoder import espeak
from decoder.audio_chunks import script_language, script_runs
from decoder.clause_pipeline import ClausePipeline

log = logging.getLogger(__name__)


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    voice: str = Field("piper-joe", description="asset name (core.assets) or a path to a .onnx voice")
    fallback: Literal["espeak"] | None = Field("espeak", description="speaks the clauses in CJK scripts")
    length_scale: float | None = Field(None, gt=0.1, le=4, description="> 1 is slower (voice default if null)")
    speed: float | None = Field(None, gt=0.25, le=10, description="1 / length_scale; give one of the two")
    speaker: int | str | None = Field(None, description="multi-speaker voices: id or name")
    noise_scale: float | None = Field(None, ge=0, le=2, description="voice variation (voice default if null; 0: "
                                                                    "the same audio for the same text every time)")
    noise_w_scale: float | None = Field(None, ge=0, le=2, description="phoneme length variation (voice default if null)")
    chunk_ms: int = Field(200, ge=20, le=2000)
    first_clause_words: int = Field(5, ge=0, le=50, description="the reply's first clause goes to TTS after this "
                                                                "many words if no punctuation came first (0: wait)")
    threads: int = Field(2, ge=1, le=16, description="synthesis threads shared by all sessions")
    onnx_threads: int = Field(1, ge=1, le=16, description="onnxruntime threads per synthesis (they do not spin: "
                                                          "on a small box they would steal the other stages' cores)")
    lookahead: int = Field(4, ge=1, le=64, description="synthesized spans buffered ahead of the sender")
    espeak: dict = Field(default_factory=dict, description="options of the espeak-ng fallback")

    @model_validator(mode="after")
    def _one_speed(self) -> "Options":
        if self.length_scale is not None and self.speed is not None:
            raise ValueError("give length_scale or speed, not both")
        return self


class PiperDecoder(ClausePipeline):
    """Shared per server: one loaded voice and one small thread pool for all sessions."""

    def __init__(self, model_path: Path, options: Options | None = None,
                 fallback: espeak.EspeakDecoder | None = None, scheduler: Scheduler | None = None) -> None:
        from piper import PiperVoice, SynthesisConfig  # imported here: loading onnxruntime is slow

        self.options = options or Options()
        self.voice = _quiet_session(PiperVoice.load(model_path), model_path, self.options.onnx_threads)
        self.sample_rate: int = self.voice.config.sample_rate
        length_scale = self.options.length_scale or (1 / self.options.speed if self.options.speed else None)
        self.syn_config = SynthesisConfig(speaker_id=self._speaker_id(self.options.speaker), length_scale=length_scale,
                                          noise_scale=self.options.noise_scale, noise_w_scale=self.options.noise_w_scale)
        self.fallback = fallback
        self.pool = ThreadPoolExecutor(max_workers=self.options.threads, thread_name_prefix="piper")
        # One sentence per job in the scheduler's "tts" lane: a committed reply's next sentence
        # goes before a speculation's, and a cancelled reply gives its thread back within one.
        self.lane = (scheduler or Scheduler()).lane("tts", self.options.threads, executor=self.pool)
        self.chunk_s = self.options.chunk_ms / 1000

    def _speaker_id(self, speaker: int | str | None) -> int | None:
        cfg = self.voice.config
        if speaker is None:
            return None
        if isinstance(speaker, str):
            if speaker not in cfg.speaker_id_map:
                raise ValueError(f"decoder.speaker: voice has no speaker {speaker!r} "
                                 f"(it has: {', '.join(cfg.speaker_id_map) or 'one unnamed speaker'})")
            return cfg.speaker_id_map[speaker]
        if not 0 <= speaker < cfg.num_speakers:
            raise ValueError(f"decoder.speaker: {speaker} out of range (voice has {cfg.num_speakers})")
        return speaker

    async def start(self) -> None:
        """Warm up (espeak phonemizer data, onnxruntime's first run) so the first reply isn't slow."""
        await self._run(lambda: list(self.voice.synthesize("Ready.", self.syn_config)))

    async def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn, *args):
        return await self.lane.run(fn, *args)

    async def span_audio(self, clause: str) -> AsyncIterator[np.ndarray]:
        """int16 audio of one clause at sample_rate, one array per sentence as piper makes it;
        the parts in a CJK script are spoken by the fallback (when there is one)."""
        runs = script_runs(clause) if self.fallback is not None else [clause]
        for run in runs:
            if self.fallback is not None and script_language(run) is not None:
                async with aclosing(self._fallback_audio(run)) as pcms:  # kills espeak-ng if cancelled
                    async for pcm in pcms:
                        yield pcm
                continue
            sentences = iter(self.voice.synthesize(run, self.syn_config))
            while (chunk := await self._run(next, sentences, None)) is not None:
                yield chunk.audio_int16_array

    async def _fallback_audio(self, clause: str) -> AsyncIterator[np.ndarray]:
        assert self.fallback is not None
        resampler = None
        if self.fallback.sample_rate != self.sample_rate:
            resampler = soxr.ResampleStream(self.fallback.sample_rate, self.sample_rate, 1, dtype="int16")
        async with aclosing(self.fallback.pcm(clause)) as pcms:  # kills espeak-ng if cancelled
            async for pcm in pcms:
                out = resampler.resample_chunk(pcm) if resampler else pcm
                if len(out):
                    yield out
        if resampler is not None:
            tail = resampler.resample_chunk(np.zeros(0, np.int16), last=True)
            if len(tail):
                yield tail

def _quiet_session(voice, model_path: Path, threads: int):
    """The voice with an onnxruntime session that uses `threads` threads that sleep when idle.
    piper's own session takes a thread per core that spin-waits between runs, taking CPU that
    Whisper and the LLM need on a 2-core box."""
    import dataclasses

    import onnxruntime

    so = onnxruntime.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(model_path), sess_options=so, providers=["CPUExecutionProvider"])
    return dataclasses.replace(voice, session=ShrinkingSession(session))


class ShrinkingSession:
    """An onnxruntime session whose memory arena gives back, after each run, what the run grew.
    Without it the arena keeps the high-water mark of the longest sentence ever spoken: +320 MiB
    after one of 80 words, for good (piper's 63 MB VITS allocates per phoneme). Costs ~0-10 % of
    the synthesis CPU (docs/operations.md, "Soak")."""

    def __init__(self, session) -> None:
        import onnxruntime

        self._session = session
        self._run_options = onnxruntime.RunOptions()
        self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, output_names, input_feed, run_options=None):
        return self._session.run(output_names, input_feed, run_options or self._run_options)

    def __getattr__(self, name):  # everything else piper asks of a session
        return getattr(self._session, name)


def resolve_model(name_or_path: str, cache_dir: Path) -> Path:
    """A voice/model file: an existing path as given, else an embedded asset assembled in cache_dir."""
    path = Path(name_or_path).expanduser()
    if path.suffix in (".onnx", ".gguf") and path.is_file():
        return path
    from core import assets  # lazy: the asset table is only needed when building the stack

    return assets.ensure(name_or_path, cache_dir)


def build(options: dict, env) -> PiperDecoder:
    from core.config import validate_options

    opts = validate_options(Options, "decoder", options)
    fallback = None
    if opts.fallback == "espeak":
        fallback = espeak.EspeakDecoder(validate_options(espeak.Options, "decoder.espeak", opts.espeak))
    try:
        return PiperDecoder(resolve_model(opts.voice, env.cache_dir), opts, fallback, env.scheduler)
    except ValueError as exc:
        from core.config import ConfigError

        raise ConfigError(str(exc)) from None
