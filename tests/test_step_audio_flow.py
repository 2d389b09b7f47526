"""Flow (MaskedDiffWithXvec) of the Step-Audio decoder against the reference implementation's
outputs stored in tests/fixtures/step_audio_tts (see its README for how they were produced)."""
from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")

from decoder.step_audio import hparams  # noqa: E402
from decoder.step_audio.loader import CheckpointError, build_models, load_models, load_state  # noqa: E402

from tests.step_audio_fixtures import FIX, _one_torch_thread, ref, models  # noqa: E402,F401 (fixtures)


def test_flow_matches_reference_within_1e_4(models, ref):
    mel = models.flow.inference(ref["token"], ref["prompt_token"], ref["prompt_feat"], ref["embedding"],
                                noise=ref["flow_noise"])
    assert mel.shape == ref["flow_mel"].shape == (1, 80, 68)
    assert torch.max(torch.abs(mel - ref["flow_mel"])).item() < 1e-4
    assert ref["flow_mel"].abs().max() > 1.0  # the comparison is not between near-zero tensors


def test_flow_noise_matters(models, ref):
    """Guards the test above: other noise gives another mel, so equality was not an accident."""
    mel = models.flow.inference(ref["token"], ref["prompt_token"], ref["prompt_feat"], ref["embedding"],
                                noise=torch.randn_like(ref["flow_noise"]))
    assert torch.max(torch.abs(mel - ref["flow_mel"])).item() > 1e-2


def test_hparams_from_yaml_without_executing_it():
    hp = hparams.load(FIX / "model")
    assert hp.flow.input_frame_rate == 25 and hp.flow.vocab_size == 512
    assert hp.flow.t_scheduler == "cosine" and hp.flow.inference_cfg_rate == 0.7
    assert hp.flow.encoder.num_blocks == 2 and hp.flow.estimator.channels == (32, 32)
    assert hp.hift.upsample_rates == (8, 8) and hp.hift.n_fft == 16 and hp.hift.sampling_rate == 22050
    assert hp.mel["hop_size"] == 256 and hp.mel["fmax"] == 8000


def test_yaml_tags_are_not_executed(tmp_path):
    (tmp_path / "cosyvoice.yaml").write_text(
        (FIX / "cosyvoice.tiny.yaml").read_text()
        + "\nboom: !apply:os.system ['touch " + str(tmp_path / "pwned") + "']\n")
    hparams.load(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_real_size_model_has_the_published_key_layout():
    """Our modules at the real CosyVoice-300M-25Hz sizes have exactly the reference's keys and shapes
    (weight-norm pairs weight_g/weight_v fold into one weight)."""
    layout = json.loads((FIX / "real_layout_keys.json").read_text())
    flow, hift = build_models(hparams.parse(hparams.load_yaml(FIX / "cosyvoice.real.yaml")))
    for part, module in (("flow", flow), ("hift", hift)):
        expected = {}
        for key, shape in layout[part].items():
            if key.endswith(".weight_v"):
                expected[key[: -len("_v")]] = shape
            elif not key.endswith(".weight_g"):
                expected[key] = shape
        ours = {k: list(v.shape) for k, v in module.state_dict().items()}
        assert ours == expected, part
    n_flow = sum(p.numel() for p in flow.parameters())
    assert 50e6 < n_flow < 150e6  # the published flow.pt is ~100M parameters in this configuration


def test_missing_key_is_named(tmp_path, models):
    state = torch.load(FIX / "model" / "flow.pt", weights_only=True)
    del state["encoder.encoders.0.self_attn.linear_pos.weight"]
    flow, _ = build_models(models.hp)
    with pytest.raises(CheckpointError, match="encoder.encoders.0.self_attn.linear_pos.weight"):
        load_state(flow, state, "flow.pt")


def test_shape_mismatch_is_named(tmp_path, models):
    shutil.copytree(FIX / "model", tmp_path / "m")
    state = torch.load(FIX / "model" / "flow.pt", weights_only=True)
    state["encoder_proj.weight"] = torch.zeros(80, 7)
    torch.save(state, tmp_path / "m" / "flow.pt")
    with pytest.raises(CheckpointError, match=r"encoder_proj.weight.*\(80, 7\)"):
        load_models(tmp_path / "m")


def test_unexpected_key_is_named(models):
    state = torch.load(FIX / "model" / "hift.pt", weights_only=True)
    state["conv_extra.weight"] = torch.zeros(1)
    _, hift = build_models(models.hp)
    with pytest.raises(CheckpointError, match="conv_extra.weight"):
        load_state(hift, state, "hift.pt")


def test_bfloat16_flow_stays_close(models, ref):
    """The GPU path runs the flow in bf16 (as the reference does); on CPU it must still be sane."""
    flow, _ = build_models(models.hp)
    flow.load_state_dict(models.flow.state_dict())
    flow.to(torch.bfloat16)
    mel = flow.inference(ref["token"], ref["prompt_token"], ref["prompt_feat"], ref["embedding"],
                         noise=ref["flow_noise"]).float()
    rel = (mel - ref["flow_mel"]).norm() / ref["flow_mel"].norm()
    assert rel < 0.1
