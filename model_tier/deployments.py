"""The model tier's Serve deployments: the local stages' own model code inside Ray replicas.

`WhisperReplica` holds a `WhisperEngine` (streaming_tokenizer/whisper.py) and batches requests
with `serve.batch`: the requests that arrive while a batch runs (from any session of any media
worker) form the next one, and those of one encoder window size go to CTranslate2 together, as
the local engine's scheduler lane does. `PiperReplica` holds a `PiperDecoder`
(decoder/piper_tts.py) and streams one clause's audio back sentence by sentence. Both count what
they did (`stats()`), for the tests and the operator.

Replicas, autoscaling and placement (num_cpus / num_gpus / custom resources) are the stage's
`deployment:` options (core/ray_serve.DeploymentOptions), applied by `applications()`.
"""
from __future__ import annotations

import asyncio
import collections
import os
from contextlib import aclosing
from pathlib import Path
from typing import Any

from ray import serve


@serve.deployment
class WhisperReplica:
    def __init__(self, whisper: dict, cache_dir: str, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        from core.scheduler import Scheduler
        from streaming_tokenizer.whisper import Options, WhisperEngine, resolve_model

        opts = Options.model_validate(whisper)
        self.engine = WhisperEngine(resolve_model(opts.model, Path(cache_dir)), opts, Scheduler())
        self._batched.set_max_batch_size(max_batch_size)
        self._batched.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.batch_sizes: collections.Counter[int] = collections.Counter()

    async def transcribe(self, audio, language: str | None) -> tuple[str, str | None]:
        """One turn's float32 16 kHz audio: (text, language), as WhisperEngine.transcribe."""
        return await self._batched((audio, language))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _batched(self, items: list[tuple[Any, str | None]]) -> list[tuple[str, str | None]]:
        self.batch_sizes[len(items)] += 1
        groups: dict[int, list[int]] = collections.defaultdict(list)  # one CTranslate2 batch per window
        for i, (audio, _) in enumerate(items):
            groups[self.engine.window_of(len(audio))].append(i)
        results: list[Any] = [None] * len(items)
        loop = asyncio.get_running_loop()
        for indices in groups.values():
            batch = [items[i] for i in indices]
            if self.engine.window_of(len(batch[0][0])) == 0:  # the full-window path: one at a time
                done = [await loop.run_in_executor(self.engine.executor, self.engine.transcribe, *item)
                        for item in batch]
            else:
                done = await loop.run_in_executor(self.engine.executor, self.engine.transcribe_batch, batch)
            for i, result in zip(indices, done):
                results[i] = result
        return results

    async def echo(self, audio, language: str | None) -> tuple[str, str | None]:
        """The transcribe() call without the model: what a call costs on its own (bench/ray_overhead.py)."""
        return ("", language) if len(audio) else ("", None)

    def stats(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "batch_sizes": dict(self.batch_sizes), "window_runs": self.engine.window_runs,
                "loop_retries": self.engine.loop_retries, "full_runs": self.engine.full_runs}


@serve.deployment
class PiperReplica:
    def __init__(self, piper: dict, cache_dir: str) -> None:
        from core.stages import BuildEnv
        from decoder.piper_tts import build

        self.decoder = build(piper, BuildEnv(cache_dir=Path(cache_dir)))
        list(self.decoder.voice.synthesize("Ready.", self.decoder.syn_config))  # onnxruntime's slow first run
        self.counts = collections.Counter()

    def info(self) -> dict[str, Any]:
        return {"sample_rate": self.decoder.sample_rate, "pid": os.getpid()}

    async def span_audio(self, clause: str):
        """int16 arrays of one clause, one per sentence as piper makes it (streamed to the caller).
        A cancelled request stops here: its next sentence is never synthesized."""
        self.counts["requests"] += 1
        finished = False
        try:
            async with aclosing(self.decoder.span_audio(clause)) as spans:
                async for pcm in spans:
                    self.counts["pieces"] += 1
                    yield pcm
            finished = True
        finally:
            self.counts["finished" if finished else "stopped_early"] += 1

    async def echo_stream(self, pieces: int, samples: int):
        """span_audio() without the model: `pieces` int16 arrays of `samples` (bench/ray_overhead.py)."""
        import numpy as np

        for _ in range(pieces):
            yield np.zeros(samples, np.int16)

    def stats(self) -> dict[str, Any]:
        return {"pid": os.getpid(), **self.counts}


def applications(cfg) -> dict[str, tuple[str, Any]]:
    """{app name: (what it serves, the bound application)} for the config's remote stages."""
    from core.config import ConfigError, validate_options
    from decoder import ray_piper
    from streaming_tokenizer import ray_whisper

    apps: dict[str, tuple[str, Any]] = {}
    cache_dir = str(cfg.cache_path)
    if cfg.tokenizer.impl == "ray-whisper":
        opts = validate_options(ray_whisper.Options, "tokenizer", cfg.tokenizer.options())
        dep = opts.deployment
        apps[opts.app] = ("ray-whisper", WhisperReplica.options(name="whisper", **dep.serve_options()).bind(
            opts.whisper, cache_dir, dep.max_batch_size, dep.batch_wait_timeout_s))
    if cfg.decoder.impl == "ray-piper":
        opts = validate_options(ray_piper.Options, "decoder", cfg.decoder.options())
        if opts.app in apps:
            raise ConfigError(f"decoder.app: {opts.app!r} is the tokenizer's app too; give each its own name")
        apps[opts.app] = ("ray-piper", PiperReplica.options(name="piper", **opts.deployment.serve_options()).bind(
            opts.piper, cache_dir))
    return apps
