"""The linguistic stream: Paraformer-online encoder → nearest of 1024 k-means centroids, 16.7 Hz.

As Step-Audio's tokenizer runs it: audio in chunks of chunk_size[1] LFR frames (4 × 60 ms =
3840 samples), each chunk's frames through the streaming encoder with encoder look-back 4,
every output frame mapped to its nearest centroid (Euclidean). Codes come out as chunks
complete; finish() encodes the partial last chunk on a copy of the state, so the live stream
can continue after a pause exactly as if finish() had never been called.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from streaming_tokenizer.step_audio.frontend import Frontend, FrontendConfig, FrontendState
from streaming_tokenizer.step_audio.loader import (
    ModelDirError, TokenizerFiles, read_centroids, read_cmvn, read_paraformer_config, read_state_dict,
)
from streaming_tokenizer.step_audio.sanm import EncoderCache, SanmChunkEncoder

SAMPLES_PER_LFR_FRAME = 960  # 60 ms at 16 kHz


@dataclass
class LinguisticState:
    frontend: FrontendState
    cache: EncoderCache
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # < one chunk
    codes: list[int] = field(default_factory=list)


class LinguisticModel:
    """Shared per server. Not thread-safe: run every call on one executor thread."""

    def __init__(self, frontend: Frontend, encoder: SanmChunkEncoder, centroids: np.ndarray, device: str = "cpu"):
        self.frontend = frontend
        self.encoder = encoder.to(device).eval()
        self.centroids = torch.from_numpy(centroids).to(device)
        self.device = device
        self.chunk_samples = encoder.chunk_size[1] * SAMPLES_PER_LFR_FRAME

    @classmethod
    def load(cls, files: TokenizerFiles, device: str = "cpu", chunk_size=(0, 4, 5), look_back: int = 4):
        cfg = read_paraformer_config(files.config_yaml)
        enc = cfg["encoder_conf"]
        if not enc.get("normalize_before", True) or enc.get("concat_after", False):
            raise ModelDirError(f"{files.config_yaml}: expected normalize_before: true, concat_after: false")
        try:
            front_cfg = FrontendConfig.from_funasr(cfg["frontend_conf"], *read_cmvn(files.am_mvn))
        except ValueError as exc:
            raise ModelDirError(f"{files.am_mvn}: {exc}") from None
        encoder = SanmChunkEncoder(
            front_cfg.feature_dim, int(enc.get("output_size", 512)), int(enc.get("attention_heads", 4)),
            int(enc.get("linear_units", 2048)), int(enc.get("num_blocks", 50)), int(enc.get("kernel_size", 11)),
            int(enc.get("sanm_shfit", 0)), tuple(chunk_size), look_back)
        state = {k[len("encoder."):]: v for k, v in read_state_dict(files.model_pt).items()
                 if k.startswith("encoder.")}
        _load_strict(encoder, state, files.model_pt)
        return cls(Frontend(front_cfg), encoder, read_centroids(files.centroids, encoder.d_model), device)

    def new_state(self) -> LinguisticState:
        return LinguisticState(FrontendState(), self.encoder.new_cache(self.device))

    def feed(self, state: LinguisticState, samples: np.ndarray) -> list[int]:
        """Add 16 kHz float samples; encode every completed chunk; return the new codes."""
        buf = np.concatenate([state.pending, samples]) if len(state.pending) else samples
        new: list[int] = []
        n_full = len(buf) // self.chunk_samples
        for i in range(n_full):
            new += self._encode(state.frontend, state.cache, buf[i * self.chunk_samples:(i + 1) * self.chunk_samples])
        state.pending = buf[n_full * self.chunk_samples:].astype(np.float32)
        state.codes += new
        return new

    def finish(self, state: LinguisticState) -> list[int]:
        """Codes of the partial last chunk (end of input), computed on a copy: `state` is unchanged.

        Like the reference (is_final with an empty last chunk), nothing is flushed when the
        audio ends exactly on a chunk boundary."""
        if not len(state.pending):
            return []
        return self._encode(state.frontend.copy(), state.cache.copy(), state.pending, final=True)

    def tokenize(self, samples: np.ndarray) -> list[int]:
        """The whole utterance at once (the reference's wav2token path): same chunks, same codes."""
        state = self.new_state()
        return self.feed(state, samples.astype(np.float32)) + self.finish(state)

    def _encode(self, front: FrontendState, cache: EncoderCache, samples: np.ndarray, final: bool = False) -> list[int]:
        feats = self.frontend.advance(front, samples, final)
        if not len(feats):
            return []
        out = self.encoder.forward_chunk(torch.from_numpy(feats)[None].to(self.device), cache)[0]
        return torch.cdist(out, self.centroids).argmin(dim=1).tolist()


def _load_strict(encoder: SanmChunkEncoder, state: dict, path) -> None:
    own = encoder.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in own.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing encoder.{missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
        if unexpected:
            parts.append(f"unexpected encoder.{unexpected[0]}" + (f" and {len(unexpected) - 1} more"
                                                                  if len(unexpected) > 1 else ""))
        if wrong:
            parts.append(f"shape of encoder.{wrong[0]}")
        raise ModelDirError(f"{path}: weights do not fit config.yaml's encoder_conf: " + "; ".join(parts))
    encoder.load_state_dict(state)
