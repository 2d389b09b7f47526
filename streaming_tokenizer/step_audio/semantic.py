"""The semantic stream: CosyVoice's speech tokenizer v1 (ONNX), 25 Hz, 4096 codes.

Its inputs are `feats` (1, 128, T) whisper log-mel and `feats_length` (1,) int32; output 0 holds
the codes, T / 4 of them. Step-Audio runs it over the utterance in pieces of at most 30 s; we
run it over fixed segments (segment_s) as each one fills, and over the partial last segment
when the turn is finalized. The log-mel's level floor is per segment, so codes near segment
boundaries can differ from whole-utterance codes (docs/step-audio.md measures how much).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streaming_tokenizer.step_audio.loader import ModelDirError
from streaming_tokenizer.step_audio.mel import N_MELS, log_mel

MIN_SEGMENT_SAMPLES = 480  # the reference drops shorter pieces (too short for the STFT)


def onnx_providers(device: str) -> list[str]:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if device != "cpu" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@dataclass
class SemanticState:
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # < one segment
    codes: list[int] = field(default_factory=list)


class SemanticModel:
    """Shared per server; run calls on one executor thread."""

    def __init__(self, onnx_path: Path, segment_s: float, device: str = "cpu", threads: int = 1) -> None:
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(onnx_path), sess_options=opts,
                                                        providers=onnx_providers(device))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelDirError(f"{onnx_path}: not a loadable ONNX model: {exc}") from None
        inputs = self.session.get_inputs()
        mel_dim = inputs[0].shape[1] if inputs and len(inputs[0].shape) == 3 else None
        if len(inputs) != 2 or len(inputs[0].shape) != 3 or isinstance(mel_dim, int) and mel_dim != N_MELS:
            got = [(i.name, i.shape) for i in inputs]
            raise ModelDirError(f"{onnx_path}: inputs {got}; expected feats (1, {N_MELS}, T) and feats_length (1,)")
        self.feats_name, self.length_name = inputs[0].name, inputs[1].name
        self.segment_samples = int(round(segment_s * 16_000))

    def tokenize_segment(self, samples: np.ndarray) -> list[int]:
        if len(samples) < MIN_SEGMENT_SAMPLES:
            return []
        feats = log_mel(samples)[None]
        out = self.session.run(None, {self.feats_name: feats,
                                      self.length_name: np.array([feats.shape[2]], dtype=np.int32)})[0]
        return [int(c) for c in np.asarray(out).reshape(-1)]

    def new_state(self) -> SemanticState:
        return SemanticState()

    def feed(self, state: SemanticState, samples: np.ndarray) -> list[int]:
        buf = np.concatenate([state.pending, samples]) if len(state.pending) else samples
        new: list[int] = []
        seg = self.segment_samples
        n_full = len(buf) // seg
        for i in range(n_full):
            new += self.tokenize_segment(buf[i * seg:(i + 1) * seg])
        state.pending = buf[n_full * seg:].astype(np.float32)
        state.codes += new
        return new

    def finish(self, state: SemanticState) -> list[int]:
        """Codes of the partial last segment; `state` is unchanged."""
        return self.tokenize_segment(state.pending)

    def tokenize(self, samples: np.ndarray, segment_samples: int | None = None) -> list[int]:
        """The whole utterance, cut into segments of segment_samples (default: the configured length)."""
        seg = segment_samples or self.segment_samples
        codes: list[int] = []
        for start in range(0, len(samples), seg):
            codes += self.tokenize_segment(samples[start:start + seg].astype(np.float32))
        return codes
