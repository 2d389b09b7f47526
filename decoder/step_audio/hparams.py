"""Read the hyper-parameters of a CosyVoice-300M-25Hz model directory from its cosyvoice.yaml.

The yaml is written for HyperPyYAML (`!new:module.Class`, `!name:`, `!apply:`, `!ref <key>`),
which instantiates classes while parsing. We never execute it: a safe loader turns every tag
into an inert `Tagged` record, and we read only the keyword arguments we need.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class HParamsError(ValueError):
    """cosyvoice.yaml is missing something we need or holds an unsupported value."""


@dataclass
class Tagged:
    kind: str  # "new", "name" or "apply"
    target: str  # e.g. "cosyvoice.flow.flow.MaskedDiffWithXvec"
    args: Any  # mapping (keyword arguments), list (positional) or None


@dataclass
class Ref:
    expr: str  # "<key>" or "<key.sub>"


class _Loader(yaml.SafeLoader):
    pass


def _tagged(loader: _Loader, suffix: str, node: yaml.Node, kind: str) -> Tagged:
    if isinstance(node, yaml.MappingNode):
        args: Any = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        args = loader.construct_sequence(node, deep=True)
    else:
        args = loader.construct_scalar(node) or None
    return Tagged(kind, suffix, args)


for _kind in ("new", "name", "apply"):
    _Loader.add_multi_constructor(f"!{_kind}:", lambda l, s, n, k=_kind: _tagged(l, s, n, k))
_Loader.add_constructor("!ref", lambda l, n: Ref(str(l.construct_scalar(n))))
_Loader.add_constructor("!tuple", lambda l, n: tuple(l.construct_sequence(n, deep=True)))
# Any other HyperPyYAML tag (!copy, !include:, !module:, ...) is kept inert too.
_Loader.add_multi_constructor("!", lambda l, s, n: _tagged(l, s, n, "other"))
# HyperPyYAML writes 1e-06 as a float; plain YAML 1.1 would read it as a string.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _resolve(value: Any, root: dict) -> Any:
    if isinstance(value, Ref):
        m = re.fullmatch(r"\s*<([\w.]+)>\s*", value.expr)
        if not m:
            raise HParamsError(f"unsupported !ref expression {value.expr!r} (only '<key>' is read)")
        node: Any = root
        for part in m.group(1).split("."):
            if not isinstance(node, dict) or part not in node:
                raise HParamsError(f"!ref {value.expr}: no such key")
            node = node[part]
        return _resolve(node, root)
    if isinstance(value, Tagged):
        return Tagged(value.kind, value.target, _resolve(value.args, root))
    if isinstance(value, dict):
        return {k: _resolve(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, root) for v in value]
    return value


def load_yaml(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        raw = yaml.load(f, Loader=_Loader)  # noqa: S506 - our loader is a SafeLoader subclass
    if not isinstance(raw, dict):
        raise HParamsError(f"{path}: expected a mapping at the top level")
    return _resolve(raw, raw)


def _section(node: Any, where: str, class_suffix: str) -> dict:
    if not isinstance(node, Tagged) or node.kind != "new" or not isinstance(node.args, dict):
        raise HParamsError(f"{where}: expected a !new:...{class_suffix} mapping")
    if not node.target.endswith(class_suffix):
        raise HParamsError(f"{where}: unsupported class {node.target} (expected ...{class_suffix})")
    return node.args


@dataclass
class EncoderHP:
    input_size: int = 512
    output_size: int = 512
    attention_heads: int = 8
    linear_units: int = 2048
    num_blocks: int = 6
    input_layer: str = "linear"
    pos_enc_layer_type: str = "rel_pos_espnet"
    selfattention_layer_type: str = "rel_selfattn"
    normalize_before: bool = True
    use_cnn_module: bool = False
    macaron_style: bool = False
    activation_type: str = "swish"
    key_bias: bool = True


@dataclass
class EstimatorHP:
    in_channels: int = 320
    out_channels: int = 80
    channels: tuple[int, ...] = (256, 256)
    attention_head_dim: int = 64
    n_blocks: int = 4
    num_mid_blocks: int = 12
    num_heads: int = 8
    act_fn: str = "gelu"


@dataclass
class FlowHP:
    input_size: int = 512
    output_size: int = 80
    spk_embed_dim: int = 192
    vocab_size: int = 4096
    input_frame_rate: int = 25
    sampling_rate: int = 22050
    hop_size: int = 256
    regulator_channels: int = 80
    sampling_ratios: tuple[int, ...] = (1, 1, 1, 1)
    spk_emb_dim: int = 80  # the projected speaker embedding fed to the estimator
    t_scheduler: str = "cosine"
    inference_cfg_rate: float = 0.7
    sigma_min: float = 1e-6
    encoder: EncoderHP = field(default_factory=EncoderHP)
    estimator: EstimatorHP = field(default_factory=EstimatorHP)


@dataclass
class HiFTHP:
    in_channels: int = 80
    base_channels: int = 512
    nb_harmonics: int = 8
    sampling_rate: int = 22050
    nsf_alpha: float = 0.1
    nsf_sigma: float = 0.003
    nsf_voiced_threshold: float = 10
    upsample_rates: tuple[int, ...] = (8, 8)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16)
    n_fft: int = 16
    hop_len: int = 4
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5),) * 3
    source_resblock_kernel_sizes: tuple[int, ...] = (7, 11)
    source_resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5),) * 2
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_in_channels: int = 80
    f0_cond_channels: int = 512
    f0_num_class: int = 1


@dataclass
class ModelHP:
    flow: FlowHP
    hift: HiFTHP
    mel: dict  # feat_extractor kwargs: n_fft, num_mels, sampling_rate, hop_size, win_size, fmin, fmax


def _fill(obj: Any, args: dict, where: str) -> Any:
    """Copy the keys of args that obj declares; tuples stay tuples."""
    for key, value in args.items():
        if key in obj.__dataclass_fields__ and not isinstance(value, (Tagged, dict)):
            default = getattr(obj, key)
            if isinstance(default, tuple):
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
            setattr(obj, key, value)
    return obj


def parse(cfg: dict) -> ModelHP:
    flow_args = _section(cfg.get("flow"), "flow", "MaskedDiffWithXvec")
    flow = _fill(FlowHP(), flow_args, "flow")
    mel_conf = flow_args.get("mel_feat_conf") or {}
    flow.sampling_rate = int(mel_conf.get("sampling_rate", flow.sampling_rate))
    flow.hop_size = int(mel_conf.get("hop_size", flow.hop_size))
    enc = _section(flow_args.get("encoder"), "flow.encoder", "ConformerEncoder")
    flow.encoder = _fill(EncoderHP(), enc, "flow.encoder")
    if flow.encoder.input_layer != "linear" or flow.encoder.pos_enc_layer_type != "rel_pos_espnet":
        raise HParamsError("flow.encoder: only input_layer 'linear' with 'rel_pos_espnet' is supported")
    if flow.encoder.use_cnn_module:
        raise HParamsError("flow.encoder.use_cnn_module: True is not supported")
    reg = _section(flow_args.get("length_regulator"), "flow.length_regulator", "InterpolateRegulator")
    flow.regulator_channels = int(reg["channels"])
    flow.sampling_ratios = tuple(reg.get("sampling_ratios", ()))
    dec = _section(flow_args.get("decoder"), "flow.decoder", "ConditionalCFM")
    flow.spk_emb_dim = int(dec.get("spk_emb_dim", flow.spk_emb_dim))
    cfm = dec.get("cfm_params")
    if isinstance(cfm, Tagged):  # !new:omegaconf.DictConfig {content: {...}}
        cfm = (cfm.args or {}).get("content", cfm.args)
    cfm = cfm or {}
    if cfm.get("solver", "euler") != "euler":
        raise HParamsError(f"flow.decoder.cfm_params.solver: {cfm['solver']!r} is not supported")
    flow.t_scheduler = str(cfm.get("t_scheduler", flow.t_scheduler))
    flow.inference_cfg_rate = float(cfm.get("inference_cfg_rate", flow.inference_cfg_rate))
    flow.sigma_min = float(cfm.get("sigma_min", flow.sigma_min))
    est = _section(dec.get("estimator"), "flow.decoder.estimator", "ConditionalDecoder")
    flow.estimator = _fill(EstimatorHP(), est, "flow.decoder.estimator")

    hift_args = _section(cfg.get("hift"), "hift", "HiFTGenerator")
    hift = _fill(HiFTHP(), hift_args, "hift")
    istft = hift_args.get("istft_params") or {}
    hift.n_fft = int(istft.get("n_fft", hift.n_fft))
    hift.hop_len = int(istft.get("hop_len", hift.hop_len))
    f0 = _section(hift_args.get("f0_predictor"), "hift.f0_predictor", "ConvRNNF0Predictor")
    hift.f0_in_channels = int(f0.get("in_channels", hift.f0_in_channels))
    hift.f0_cond_channels = int(f0.get("cond_channels", hift.f0_cond_channels))
    hift.f0_num_class = int(f0.get("num_class", hift.f0_num_class))

    fe = cfg.get("feat_extractor")
    mel = dict(n_fft=1024, num_mels=80, sampling_rate=flow.sampling_rate, hop_size=flow.hop_size,
               win_size=1024, fmin=0, fmax=8000)
    if isinstance(fe, Tagged) and isinstance(fe.args, dict):
        mel.update({k: v for k, v in fe.args.items() if k in mel})
    return ModelHP(flow=flow, hift=hift, mel=mel)


def load(model_dir: Path) -> ModelHP:
    path = Path(model_dir) / "cosyvoice.yaml"
    if not path.exists():
        raise HParamsError(f"{path}: not found")
    return parse(load_yaml(path))
