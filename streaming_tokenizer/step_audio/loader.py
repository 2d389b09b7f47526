"""The Step-Audio-Tokenizer directory as published, checked before anything is loaded.

    <dir>/dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online/
        config.yaml   FunASR model config (frontend_conf, encoder_conf)
        model.pt      Paraformer-online state dict (only the `encoder.*` keys are used)
        am.mvn        Kaldi nnet CMVN (<AddShift> / <Rescale>)
    <dir>/linguistic_tokenizer.npy   k-means centroids, (1024, encoder output size)
    <dir>/speech_tokenizer_v1.onnx   CosyVoice speech tokenizer (feats, feats_length → codes)

A missing or malformed file is a ModelDirError that names the file and what was expected,
so a wrong `model_dir` in the config reads as one line, not a stack trace.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from core.config import ConfigError

PARAFORMER_SUBDIR = "dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online"
CENTROIDS_FILE = "linguistic_tokenizer.npy"
SEMANTIC_ONNX_FILE = "speech_tokenizer_v1.onnx"
LINGUISTIC_CODES = 1024
SEMANTIC_CODES = 4096


class ModelDirError(ConfigError):
    """A configured model directory is missing or incomplete."""


@dataclass(frozen=True)
class TokenizerFiles:
    root: Path
    paraformer_dir: Path
    config_yaml: Path
    model_pt: Path
    am_mvn: Path
    centroids: Path
    semantic_onnx: Path


def locate(model_dir: str | Path) -> TokenizerFiles:
    root = Path(model_dir).expanduser()
    if not root.is_dir():
        raise ModelDirError(f"tokenizer.model_dir: {root} is not a directory (expected the Step-Audio-Tokenizer "
                            f"download: {PARAFORMER_SUBDIR}/, {CENTROIDS_FILE}, {SEMANTIC_ONNX_FILE})")
    para = root / PARAFORMER_SUBDIR
    files = TokenizerFiles(root, para, para / "config.yaml", para / "model.pt", para / "am.mvn",
                           root / CENTROIDS_FILE, root / SEMANTIC_ONNX_FILE)
    expected = {
        files.config_yaml: "the Paraformer-online FunASR config",
        files.model_pt: "the Paraformer-online weights (torch state dict)",
        files.am_mvn: "the Paraformer CMVN statistics (Kaldi nnet text format)",
        files.centroids: f"the linguistic k-means centroids ({LINGUISTIC_CODES} rows)",
        files.semantic_onnx: "the CosyVoice speech tokenizer v1 (ONNX)",
    }
    for path, what in expected.items():
        if not path.is_file():
            raise ModelDirError(f"tokenizer.model_dir: missing {path} ({what})")
    return files


def read_paraformer_config(path: Path) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ModelDirError(f"{path}: not valid YAML: {exc}") from None
    for section in ("frontend_conf", "encoder_conf"):
        if not isinstance(cfg.get(section), dict):
            raise ModelDirError(f"{path}: no `{section}` mapping (expected a FunASR Paraformer-online config)")
    encoder = cfg.get("encoder", "SANMEncoderChunkOpt")
    if encoder != "SANMEncoderChunkOpt":
        raise ModelDirError(f"{path}: encoder is {encoder!r}; expected SANMEncoderChunkOpt (Paraformer-online)")
    layer = cfg["encoder_conf"].get("input_layer", "pe_online")
    if layer != "pe_online":
        raise ModelDirError(f"{path}: encoder_conf.input_layer is {layer!r}; expected pe_online")
    return cfg


def read_cmvn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(shift, scale) vectors: features are normalized as (x + shift) * scale, as FunASR does."""
    shift = scale = None
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines[:-1]):
        head = line.split()[:1]
        nxt = lines[i + 1].split()
        if head in (["<AddShift>"], ["<Rescale>"]) and nxt[:1] == ["<LearnRateCoef>"]:
            # "<LearnRateCoef> 0 [ v1 v2 ... ]": the numbers sit between the brackets
            values = np.array(nxt[3:-1], dtype=np.float32)
            if head == ["<AddShift>"]:
                shift = values
            else:
                scale = values
    if shift is None or scale is None or shift.shape != scale.shape:
        raise ModelDirError(f"{path}: expected Kaldi nnet CMVN with <AddShift> and <Rescale> vectors of one size")
    return shift, scale


def read_centroids(path: Path, dim: int) -> np.ndarray:
    try:
        kms = np.load(path)
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"{path}: not a readable .npy array: {exc}") from None
    if kms.ndim != 2 or kms.shape != (LINGUISTIC_CODES, dim):
        raise ModelDirError(f"{path}: shape {kms.shape}; expected ({LINGUISTIC_CODES}, {dim}) "
                            f"(one centroid per linguistic code, encoder output size {dim})")
    return kms.astype(np.float32)


def read_state_dict(path: Path) -> dict[str, Any]:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a bad file
        raise ModelDirError(f"{path}: not a loadable torch state dict: {exc}") from None
    # FunASR checkpoints may wrap the weights, as its own loader accepts.
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not any(str(k).startswith("encoder.") for k in state):
        raise ModelDirError(f"{path}: no `encoder.*` weights (expected a Paraformer-online state dict)")
    return state
