"""Silero VAD (v5+ ONNX, run with onnxruntime; torch is never imported) behind a webrtcvad gate.

The model takes 512-sample windows at 16 kHz, each preceded by the last 64 samples of the
previous window ("context"), and carries a recurrent state of shape (2, 1, 128) between calls.
Our frames are 320 samples, so samples are queued and the model runs once per 512 collected;
process() returns the latest probability.

The gate: webrtcvad costs a few microseconds per frame. When it has called the last
`gate_hangover_ms` of audio non-speech and Silero's own latest probability is low too, the
Silero call is skipped (its windows are dropped), so a silent session costs ~15x less CPU
(docs/models.md). Silero keeps its state across a skipped stretch; it last ran on
quiet audio, which is what its state reflects anyway.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from vad.base import FRAME_SAMPLES, SAMPLE_RATE

WINDOW = 512  # samples per model call at 16 kHz
CONTEXT = 64  # samples of the previous window prepended to each call
FRAME_MS = FRAME_SAMPLES * 1000 // SAMPLE_RATE


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field("silero-vad", description="an embedded model name, or a path to a .onnx file")
    gate_aggressiveness: int | None = Field(
        1, ge=0, le=3, description="webrtcvad mode for the gate (0 = least eager to call it silence); null: no gate")
    gate_hangover_ms: int = Field(200, ge=0, description="non-speech this long before Silero is skipped")
    gate_max_prob: float = Field(0.2, ge=0.0, le=1.0, description="skip only if Silero's last probability is below")


class SileroModel:
    """One onnxruntime session per server; run() is thread-safe (onnxruntime allows concurrent run)."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads  # one window is tiny: more threads only add overhead
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        names = {i.name for i in self.session.get_inputs()}
        if names != {"input", "state", "sr"}:
            raise ValueError(f"{path}: not a Silero VAD v5+ model (inputs: {sorted(names)})")
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.calls = 0  # model runs (approximate under threads: only for measurements)

    def run(self, window: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """window: float32 (CONTEXT + WINDOW,); state: (2, 1, 128). Returns (probability, state)."""
        prob, new_state = self.session.run(
            None, {"input": window[None, :], "state": state, "sr": self._sr})
        self.calls += 1
        return float(prob[0, 0]), new_state


class SileroVad:
    """Per session: recurrent state, queued samples and the gate's memory."""

    def __init__(self, model: SileroModel, opts: Options) -> None:
        self._model = model
        self._gate = None
        if opts.gate_aggressiveness is not None:
            import webrtcvad

            self._gate = webrtcvad.Vad(opts.gate_aggressiveness)
        self._hangover_frames = opts.gate_hangover_ms // FRAME_MS
        self._gate_max_prob = opts.gate_max_prob
        self.skipped_frames = 0
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._queue = np.zeros(0, dtype=np.float32)
        self._prob = 0.0
        self._quiet_frames = 0

    def process(self, frame: np.ndarray) -> float:
        if len(frame) != FRAME_SAMPLES:
            raise ValueError(f"expected {FRAME_SAMPLES} samples, got {len(frame)}")
        samples = frame.astype(np.float32) / 32768.0
        if self._gate is not None:
            pcm = np.ascontiguousarray(frame, dtype="<i2").tobytes()
            self._quiet_frames = 0 if self._gate.is_speech(pcm, SAMPLE_RATE) else self._quiet_frames + 1
            if self._quiet_frames > self._hangover_frames and self._prob < self._gate_max_prob:
                self._skip(samples)
                return self._prob
        queue = np.concatenate([self._queue, samples])
        while len(queue) >= WINDOW:
            window = np.concatenate([self._context, queue[:WINDOW]])
            self._prob, self._state = self._model.run(window, self._state)
            self._context = window[-CONTEXT:]
            queue = queue[WINDOW:]
        self._queue = queue
        return self._prob


    def _skip(self, samples: np.ndarray) -> None:
        """Drop the windows Silero would have run, keeping the window grid and context intact,
        so the first window after the gate opens is exactly the one an ungated run would see."""
        self.skipped_frames += 1
        queue = np.concatenate([self._queue, samples])
        whole = len(queue) // WINDOW * WINDOW
        if whole:
            self._context = queue[whole - CONTEXT : whole]
            queue = queue[whole:]
        self._queue = queue


class SileroVadFactory:
    def __init__(self, model: SileroModel, opts: Options) -> None:
        self.model = model
        self.opts = opts

    def create(self) -> SileroVad:
        return SileroVad(self.model, self.opts)


def resolve_model(name: str, cache_dir: Path) -> Path:
    from core import assets
    from core.config import ConfigError

    if name in assets.ASSETS:
        return assets.ensure(name, cache_dir)
    path = Path(name).expanduser()
    if not path.is_file():
        raise ConfigError(f"vad.model: {name!r} is neither an embedded model nor an .onnx file")
    return path


def build(options: dict, env) -> SileroVadFactory:
    from core.config import validate_options

    opts = validate_options(Options, "vad", options)
    return SileroVadFactory(SileroModel(resolve_model(opts.model, env.cache_dir)), opts)
