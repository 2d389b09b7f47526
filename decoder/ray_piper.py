"""Piper on the model tier (Ray Serve, model_tier/deployments.py) as the decoder.

The reply's pipeline is the local one (decoder/clause_pipeline.py: the LLM's text cut into clauses
here, ~200 ms chunks, the first clause's lead-in trimmed); only span_audio() — one clause to audio
— is remote: a streaming Serve call whose replica yields each sentence's audio as piper makes it,
so the first audio arrives while the rest of the reply is still being written and synthesized.
Each clause holds a place in this worker's "tts" lane while it streams (a committed reply's clause
goes before a speculation's); closing the reply cancels the request and the replica stops.
"""
from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
from pydantic import Field

from core import ray_serve
from core.scheduler import Scheduler
from decoder.clause_pipeline import ClausePipeline
from decoder.piper_tts import Options as PiperOptions


class Options(ray_serve.RemoteOptions):
    app: str = Field("tts", description="the Serve application (step-realtime model-tier deploys it)")
    chunk_ms: int = Field(200, ge=20, le=2000)
    first_clause_words: int = Field(5, ge=0, le=50, description="the reply's first clause goes to TTS after this "
                                                                "many words if no punctuation came first (0: wait)")
    lookahead: int = Field(4, ge=1, le=64, description="synthesized spans buffered ahead of the sender")
    piper: dict = Field(default_factory=dict, description="the replicas' voice: the local `piper` options")


class SpeechSynthesisUnreachable(ConnectionError):
    """The model tier did not answer (its replica died, none is up): the reply fails, the call goes on."""


class SpeechSynthesisFailed(RuntimeError):
    """The model tier's replica raised."""


class RayPiperDecoder(ClausePipeline):
    def __init__(self, handle, opts: Options, scheduler: Scheduler | None = None) -> None:
        self.handle = handle
        self.stream_handle = handle.options(stream=True)
        self.options = opts
        self.chunk_s = opts.chunk_ms / 1000
        self.lane = (scheduler or Scheduler()).lane("tts", opts.max_in_flight, serial=False)
        self._sample_rate: int | None = None
        self.remote_calls = 0

    @property
    def sample_rate(self) -> int:
        if self._sample_rate is None:
            raise RuntimeError("RayPiperDecoder.start() was not awaited")
        return self._sample_rate

    async def start(self) -> None:
        """Ask the tier for the voice's rate (the sessions' output rate)."""
        info = await ray_serve.call(self.handle.info.remote(), self.options.timeout_s,
                                    SpeechSynthesisUnreachable, SpeechSynthesisFailed)
        self._sample_rate = int(info["sample_rate"])

    async def span_audio(self, clause: str) -> AsyncIterator[np.ndarray]:
        async with self.lane.slot():
            self.remote_calls += 1
            pieces = ray_serve.stream(self.stream_handle.span_audio.remote(clause), self.options.timeout_s,
                                      SpeechSynthesisUnreachable, SpeechSynthesisFailed)
            try:
                async for pcm in pieces:
                    yield np.array(pcm)  # writable, like local audio (Ray's arrays may be read-only views)
            finally:
                await pieces.aclose()  # cancels the request if we stop early

    async def close(self) -> None:
        ray_serve.disconnect()


def build(options: dict, env) -> RayPiperDecoder:
    from core.config import validate_options

    opts = validate_options(Options, "decoder", options)
    validate_options(PiperOptions, "decoder.piper", opts.piper)  # the tier's voice options, checked here too
    handle = ray_serve.connected_handle(opts.app, opts.address)
    return RayPiperDecoder(handle, opts, env.scheduler)
