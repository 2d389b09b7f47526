"""Smart Turn v3.2: an audio model that says whether the speaker has finished their turn.

A Whisper-tiny-sized encoder with a classifier head (pipecat-ai/smart-turn, BSD-2-Clause; 23
languages including English and Chinese), fed the last 8 s of the turn as Whisper log-mel
features. It hears what a transcript cannot: falling intonation, a drawn-out "and…", a
trailing breath. The controller asks it once per pause (controller/turn_policy.py).

The features are faster-whisper's own Whisper log-mel extractor (80 bins, 10 ms hop) over an
8 s window, after the zero-mean/unit-variance waveform normalization the model was trained
with; tests/test_smart_turn.py checks them against the reference feature code in pipecat's
wheel. Inference runs in the scheduler's "turn" lane, one onnxruntime thread that does not
spin, so it never waits behind a Whisper batch and never takes a core from one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from core.config import validate_options
from core.scheduler import Scheduler
from vad.base import SAMPLE_RATE

WINDOW_S = 8  # the model's input: the last 8 s, zero-padded in front when the turn is shorter
_WINDOW = WINDOW_S * SAMPLE_RATE
_NORM_EPS = 1e-7


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field("smart-turn-v3.2", description="an embedded model name, or an .onnx path")
    threads: int = Field(1, ge=1, le=8, description="onnxruntime threads per inference")


class SmartTurn:
    """The per-server model (TurnCompletion)."""

    def __init__(self, model_path: Path, opts: Options, scheduler: Scheduler | None = None) -> None:
        import onnxruntime
        from faster_whisper.feature_extractor import FeatureExtractor

        so = onnxruntime.SessionOptions()
        so.intra_op_num_threads = opts.threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(model_path), sess_options=so,
                                                    providers=["CPUExecutionProvider"])
        self.features_of = FeatureExtractor(chunk_length=WINDOW_S)
        self.lane = (scheduler or Scheduler()).lane("turn", 1)

    def features(self, audio: np.ndarray) -> np.ndarray:
        """(80, 800) float32 log-mel of the last 8 s of `audio` (int16 or float in [-1, 1])."""
        x = np.asarray(audio)
        x = x.astype(np.float32) / 32768.0 if x.dtype == np.int16 else x.astype(np.float32)
        x = x[-_WINDOW:]
        if len(x) < _WINDOW:  # the model was trained with the speech at the end of the window
            x = np.concatenate([np.zeros(_WINDOW - len(x), np.float32), x])
        x = (x - x.mean()) / np.sqrt(x.var() + _NORM_EPS)
        return self.features_of(x, padding=0)[:, : _WINDOW // 160]

    def predict(self, audio: np.ndarray) -> float:
        """P(finished), blocking (~20 ms on one core)."""
        logits = self.session.run(None, {"input_features": self.features(audio)[None]})[0]
        return float(logits.reshape(-1)[0])  # the exported graph ends in a sigmoid already

    async def completion(self, audio: np.ndarray) -> float | None:
        return await self.lane.run(self.predict, audio)


class NoTurnModel:
    """`turn: {impl: none}`: no model; the controller's fixed end-of-turn wait applies."""

    async def completion(self, audio: np.ndarray) -> float | None:
        return None


def build(options: dict, env) -> SmartTurn:
    opts = validate_options(Options, "turn", options)
    path = Path(opts.model).expanduser()
    if not (path.suffix == ".onnx" and path.is_file()):
        from core import assets

        path = assets.ensure(opts.model, env.cache_dir)
    return SmartTurn(path, opts, env.scheduler)


def build_none(options: dict, env) -> NoTurnModel:
    validate_options(_NoOptions, "turn", options)
    return NoTurnModel()


class _NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
