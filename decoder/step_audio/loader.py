"""Build the flow and HiFT models of a CosyVoice-300M-25Hz directory and load its weights.

Expected files (as published with Step-Audio-TTS-3B): cosyvoice.yaml, flow.pt, hift.pt and
campplus.onnx (speaker embedding; used by the voice-cloning front end). Checkpoints are read with
torch.load(weights_only=True) — a plain state dict, no pickled code. Weight-normalised convs
(`X.weight_g` + `X.weight_v`, or the newer `X.parametrizations.weight.original0/1`) are folded into
`X.weight` once here, so inference pays nothing for them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from decoder.step_audio import hparams
from decoder.step_audio.flow import MaskedDiffWithXvec
from decoder.step_audio.hift import HiFTGenerator


class CheckpointError(ValueError):
    """A checkpoint lacks a key, has an unexpected one, or a tensor of the wrong shape."""


def fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    pairs = {}
    for key, value in state.items():
        for g_suffix, v_suffix in ((".weight_g", ".weight_v"),
                                   (".parametrizations.weight.original0", ".parametrizations.weight.original1")):
            if key.endswith(g_suffix) or key.endswith(v_suffix):
                base = key[: -len(g_suffix)] if key.endswith(g_suffix) else key[: -len(v_suffix)]
                slot = 0 if key.endswith(g_suffix) else 1
                pairs.setdefault((base, g_suffix, v_suffix), [None, None])[slot] = value
                break
        else:
            out[key] = value
    for (base, g_suffix, v_suffix), (g, v) in pairs.items():
        if g is None or v is None:
            missing = base + (g_suffix if g is None else v_suffix)
            raise CheckpointError(f"missing key {missing!r} (the other half of a weight-norm pair is present)")
        out[base + ".weight"] = torch._weight_norm(v.float(), g.float(), 0).to(v.dtype)
    return out


def load_state(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with errors that name the offending key(s)."""
    state = fold_weight_norm(state)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}" + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""))
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:8]}" + (f" (+{len(unexpected) - 8} more)" if len(unexpected) > 8 else ""))
        raise CheckpointError(f"{source}: " + "; ".join(parts) + " — does cosyvoice.yaml match the checkpoint?")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{source}: key {key!r} has shape {tuple(state[key].shape)}, the yaml implies {tuple(tensor.shape)}")
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise CheckpointError(f"{path}: not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a state dict")
    return state


@dataclass
class CosyVoiceModels:
    hp: hparams.ModelHP
    flow: MaskedDiffWithXvec
    hift: HiFTGenerator
    model_dir: Path


def build_models(hp: hparams.ModelHP) -> tuple[MaskedDiffWithXvec, HiFTGenerator]:
    return MaskedDiffWithXvec(hp.flow).eval(), HiFTGenerator(hp.hift).eval()


def load_models(model_dir: Path | str, device: str = "cpu", flow_dtype: torch.dtype = torch.float32) -> CosyVoiceModels:
    model_dir = Path(model_dir)
    hp = hparams.load(model_dir)
    flow, hift = build_models(hp)
    load_state(flow, read_checkpoint(model_dir / "flow.pt"), str(model_dir / "flow.pt"))
    load_state(hift, read_checkpoint(model_dir / "hift.pt"), str(model_dir / "hift.pt"))
    flow.to(device=device, dtype=flow_dtype)
    hift.to(device=device)  # HiFT stays float32, as in the reference
    return CosyVoiceModels(hp, flow, hift, model_dir)
