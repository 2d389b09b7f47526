"""Whisper on the model tier (Ray Serve, model_tier/deployments.py) as the streaming tokenizer.

Only the model call is remote. The session side is the local one (streaming_tokenizer/whisper.py's
`WhisperTokenizer`): push() buffers the turn's audio, finalize() is cached by the amount of audio
it covers, and a speculation's and the end of turn's finalize() for the same audio share one job.
The job goes through this worker's scheduler ("asr" lane, `max_in_flight` places): the end of a
turn is sent before a speculation, a discarded speculation queued here is never sent, and one
whose every waiter left is cancelled on the model tier. Batching across sessions (and across
workers) is the replica's: `serve.batch` gathers the requests that arrive together and runs
those of one encoder window as one CTranslate2 batch, as the local engine does.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field

from core import ray_serve
from core.scheduler import Scheduler
from streaming_tokenizer.whisper import Options as WhisperOptions, WhisperTokenizer, WhisperTokenizerFactory


class Options(ray_serve.RemoteOptions):
    app: str = Field("asr", description="the Serve application (step-realtime model-tier deploys it)")
    language: str | None = Field(None, description="ISO code such as 'en'; null: detect per turn")
    whisper: dict = Field(default_factory=dict, description="the replicas' model: the local `whisper` options")


class SpeechRecognitionUnreachable(ConnectionError):
    """The model tier did not answer (its replica died, none is up): the turn fails, the call goes on."""


class SpeechRecognitionFailed(RuntimeError):
    """The model tier's replica raised."""


def check_language_code(language: str) -> None:
    from faster_whisper.tokenizer import _LANGUAGE_CODES  # Whisper's 99 (+ yue), as the tier has them

    if language not in _LANGUAGE_CODES:
        raise ValueError(f"Whisper has no language {language!r}")


class RayWhisperEngine:
    """What WhisperTokenizer needs of an engine (`lane`, `window_of`), with the model on the tier."""

    def __init__(self, handle, opts: Options, scheduler: Scheduler | None = None) -> None:
        self.handle = handle
        self.opts = opts
        # serial=False: a place here is a request out, not a busy thread of this box (core/load.py).
        self.lane = (scheduler or Scheduler()).lane("asr", opts.max_in_flight, batch_fn=self._transcribe,
                                                    max_batch=1, serial=False)
        self.remote_calls = 0

    def check_language(self, language: str) -> None:
        """The tier would refuse an unknown language at the turn's end, failing that turn: refuse
        it here, when it is set. (Whether the tier's model is English-only is the tier's to say.)"""
        check_language_code(language)

    def window_of(self, samples: int) -> int:
        return 0  # one request per job: the replica groups a batch by window

    async def _transcribe(self, items: Sequence[tuple[np.ndarray, str | None]]) -> list[tuple[str, str | None]]:
        (audio, language), = items
        self.remote_calls += 1
        result = await ray_serve.call(self.handle.transcribe.remote(audio, language), self.opts.timeout_s,
                                      SpeechRecognitionUnreachable, SpeechRecognitionFailed)
        return [tuple(result)]

    async def close(self) -> None:
        ray_serve.disconnect()


def build(options: dict, env) -> WhisperTokenizerFactory:
    from core.config import ConfigError, validate_options

    opts = validate_options(Options, "tokenizer", options)
    validate_options(WhisperOptions, "tokenizer.whisper", opts.whisper)  # the tier's model options, checked here too
    if opts.language is not None:
        try:
            check_language_code(opts.language)
        except ValueError as exc:
            raise ConfigError(f"tokenizer.language: {exc}") from None
    handle = ray_serve.connected_handle(opts.app, opts.address)
    return WhisperTokenizerFactory(RayWhisperEngine(handle, opts, env.scheduler), opts.language)


__all__ = ["RayWhisperEngine", "WhisperTokenizer", "build"]
