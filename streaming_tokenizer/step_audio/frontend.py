"""Paraformer's feature frontend, streamed: Kaldi fbank → low-frame-rate stacking → CMVN.

80-bin Kaldi fbank every 10 ms (25 ms Hamming window, snip_edges), then LFR: 7 fbank frames
stacked every 6 (one 560-dim frame per 60 ms, the 16.7 Hz of the linguistic stream), the
first fbank frame repeated 3 times in front, the last repeated to fill the final frame.
FunASR's WavFrontendOnline computes the same thing from its caches; here the state is just
"samples not yet framed, fbank frames not yet stacked, next LFR index", so a copy of it can
be finalized while the live stream goes on.

Kaldi frames are independent of each other (DC removal and pre-emphasis are per frame), so
framing any 160-sample-aligned stretch gives the frames of the whole stream. Unlike FunASR's
default (dither 1.0, i.e. random noise of 1 LSB) we never dither: codes must be repeatable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import kaldi_native_fbank as knf
import numpy as np


@dataclass(frozen=True)
class FrontendConfig:
    cmvn_shift: np.ndarray
    cmvn_scale: np.ndarray
    sample_rate: int = 16_000
    n_mels: int = 80
    frame_length_ms: int = 25
    frame_shift_ms: int = 10
    lfr_m: int = 7
    lfr_n: int = 6
    window: str = "hamming"

    @property
    def window_samples(self) -> int:
        return self.sample_rate * self.frame_length_ms // 1000

    @property
    def shift_samples(self) -> int:
        return self.sample_rate * self.frame_shift_ms // 1000

    @property
    def feature_dim(self) -> int:
        return self.n_mels * self.lfr_m

    @classmethod
    def from_funasr(cls, frontend_conf: dict, shift: np.ndarray, scale: np.ndarray) -> "FrontendConfig":
        cfg = cls(shift, scale, int(frontend_conf.get("fs", 16_000)), int(frontend_conf.get("n_mels", 80)),
                  int(frontend_conf.get("frame_length", 25)), int(frontend_conf.get("frame_shift", 10)),
                  int(frontend_conf.get("lfr_m", 1)), int(frontend_conf.get("lfr_n", 1)),
                  str(frontend_conf.get("window", "hamming")))
        if shift.shape[0] != cfg.feature_dim:
            raise ValueError(f"CMVN has {shift.shape[0]} dims; the frontend makes {cfg.feature_dim}")
        return cfg


@dataclass
class FrontendState:
    samples: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # from the next fbank frame on
    frames: list[np.ndarray] = field(default_factory=list)  # fbank frames, left-padded, from index `base`
    base: int = 0  # padded index of frames[0]
    n_fbank: int = 0  # fbank frames computed so far (unpadded)
    next_lfr: int = 0

    def copy(self) -> "FrontendState":
        return FrontendState(self.samples, list(self.frames), self.base, self.n_fbank, self.next_lfr)


class Frontend:
    def __init__(self, cfg: FrontendConfig) -> None:
        self.cfg = cfg
        self._opts = knf.FbankOptions()
        self._opts.frame_opts.samp_freq = float(cfg.sample_rate)
        self._opts.frame_opts.frame_length_ms = float(cfg.frame_length_ms)
        self._opts.frame_opts.frame_shift_ms = float(cfg.frame_shift_ms)
        self._opts.frame_opts.window_type = cfg.window
        self._opts.frame_opts.dither = 0.0
        self._opts.frame_opts.snip_edges = True
        self._opts.mel_opts.num_bins = cfg.n_mels
        self._opts.energy_floor = 0.0

    def fbank(self, samples: np.ndarray) -> np.ndarray:
        """Fbank frames of float samples in [-1, 1] (scaled to int16 range, as FunASR feeds Kaldi)."""
        fb = knf.OnlineFbank(self._opts)
        fb.accept_waveform(float(self.cfg.sample_rate), (samples * 32768.0).astype(np.float32).tolist())
        n = fb.num_frames_ready
        return np.array([fb.get_frame(i) for i in range(n)], dtype=np.float32).reshape(n, self.cfg.n_mels)

    def advance(self, state: FrontendState, samples: np.ndarray, final: bool = False) -> np.ndarray:
        """Feed samples; return the LFR+CMVN frames that became complete, shape (n, n_mels * lfr_m).

        With final=True the last, partial LFR frames are emitted too (padded with the last frame)."""
        cfg = self.cfg
        buf = np.concatenate([state.samples, samples.astype(np.float32)]) if len(samples) else state.samples
        n = 0 if len(buf) < cfg.window_samples else 1 + (len(buf) - cfg.window_samples) // cfg.shift_samples
        if n:
            new = self.fbank(buf[: (n - 1) * cfg.shift_samples + cfg.window_samples])
            if state.n_fbank == 0:  # LFR's left context: the first frame, (lfr_m - 1) // 2 times
                state.frames.extend([new[0]] * ((cfg.lfr_m - 1) // 2))
            state.frames.extend(new)
            state.n_fbank += n
        state.samples = buf[n * cfg.shift_samples:]
        out: list[np.ndarray] = []
        while (start := state.next_lfr * cfg.lfr_n - state.base) + cfg.lfr_m <= len(state.frames):
            out.append(np.concatenate(state.frames[start:start + cfg.lfr_m]))
            state.next_lfr += 1
        if final and state.frames:
            while state.next_lfr < math.ceil(state.n_fbank / cfg.lfr_n):
                start = state.next_lfr * cfg.lfr_n - state.base
                got = state.frames[start:]
                out.append(np.concatenate(got + [got[-1]] * (cfg.lfr_m - len(got))))
                state.next_lfr += 1
        drop = max(0, state.next_lfr * cfg.lfr_n - state.base)
        if drop:
            del state.frames[:drop]
            state.base += drop
        if not out:
            return np.zeros((0, cfg.feature_dim), np.float32)
        feats = np.stack(out)
        return ((feats + cfg.cmvn_shift) * cfg.cmvn_scale).astype(np.float32)
