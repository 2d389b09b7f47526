"""HiFT vocoder, F0 predictor and front end against the reference outputs in
tests/fixtures/step_audio_tts, and streamed vocoding against one-shot vocoding."""
from __future__ import annotations


import numpy as np
import pytest

torch = pytest.importorskip("torch")

from decoder.step_audio.frontend import kaldi_fbank, prompt_mel  # noqa: E402
from decoder.step_audio.loader import build_models, fold_weight_norm, load_state  # noqa: E402
from decoder.step_audio.noise import NoiseBank  # noqa: E402
from decoder.step_audio.streaming import StreamConfig, VocoderStream  # noqa: E402

from tests.step_audio_fixtures import FIX, _one_torch_thread, ref, models  # noqa: E402,F401 (fixtures)


def test_hift_matches_reference_within_1e_4(models, ref):
    wav, src = models.hift.inference(ref["hift_mel"], ref["hift_phase"], ref["hift_noise"])
    assert wav.shape == ref["hift_wav"].shape == (1, 40 * 256)
    assert torch.max(torch.abs(wav - ref["hift_wav"])).item() < 1e-4
    assert torch.max(torch.abs(src - ref["hift_source"])).item() < 1e-4
    assert ref["hift_wav"].abs().max() > 0.05


def test_hift_seeded_draws_match_reference(models, ref):
    """Same global seed -> same random phases and noise, drawn in the reference's order."""
    torch.manual_seed(20)
    wav, _ = models.hift.inference(ref["hift_mel"])
    assert torch.max(torch.abs(wav - ref["hift_wav"])).item() < 1e-4
    torch.manual_seed(21)
    other, _ = models.hift.inference(ref["hift_mel"])
    assert torch.max(torch.abs(other - ref["hift_wav"])).item() > 1e-3


def test_new_style_weight_norm_keys_load_too(models):
    """`parametrizations.weight.original0/1` (torch.nn.utils.parametrizations) fold like weight_g/_v."""
    state = torch.load(FIX / "model" / "hift.pt", weights_only=True)
    renamed = {}
    for k, v in state.items():
        k = k.replace(".weight_g", ".parametrizations.weight.original0").replace(
            ".weight_v", ".parametrizations.weight.original1")
        renamed[k] = v
    _, hift = build_models(models.hp)
    load_state(hift, renamed, "hift.pt")
    for k, v in hift.state_dict().items():
        assert torch.equal(v, models.hift.state_dict()[k]), k
    assert "conv_pre.weight" in fold_weight_norm(state)


def test_f0_is_nonnegative_per_frame(models, ref):
    f0 = models.hift.f0_predictor(ref["hift_mel"])
    assert f0.shape == (1, 40) and bool((f0 >= 0).all())


@pytest.mark.parametrize("cuts", [[0, 13, 40, 41, 90, 160, 200], [0, 1, 2, 3, 100, 200], [0, 200]])
def test_streamed_vocoding_equals_one_shot(models, cuts):
    """Vocoding mel in chunks (source and phase caches, context and hold-back) gives the one-shot
    waveform everywhere: max abs difference < 1e-4 on audio in [-1, 1] (no fade is needed)."""
    g = torch.Generator().manual_seed(0)
    n = cuts[-1]
    mel = -6 + 2 * torch.sin(torch.linspace(0, 30, n))[None, None, :] + 0.5 * torch.randn(1, 80, n, generator=g)
    bank = NoiseBank(5, harmonics=9)
    one_shot, _ = models.hift.inference(mel, bank.phase, bank.hift(0, n * 256))
    stream = VocoderStream(models.hift, NoiseBank(5, harmonics=9), StreamConfig())
    parts = []
    for a, b in zip(cuts, cuts[1:]):
        stream.push(mel[:, :, a:b])
        parts.append(stream.step(final=b == n))
    streamed = torch.cat(parts)
    assert streamed.shape == one_shot[0].shape
    assert torch.max(torch.abs(streamed - one_shot[0])).item() < 1e-4


def test_prompt_mel_matches_cosyvoice_feat_extractor(ref):
    mel = prompt_mel(ref["fe_wav22"])
    assert mel.shape == (1, 43, 80)
    assert torch.max(torch.abs(mel[0].T - ref["fe_prompt_mel"][0])).item() < 1e-4


def test_kaldi_fbank_matches_torchaudio(ref):
    fb = kaldi_fbank(ref["fe_wav16"])
    assert fb.shape == ref["fe_fbank"].shape == (48, 80)
    assert torch.max(torch.abs(fb - ref["fe_fbank"])).item() < 1e-3  # log energies, float32 FFTs


def test_campplus_runs_an_onnx_model_on_mean_normalised_fbank(tmp_path, ref):
    """A stand-in campplus.onnx (max over time, then a projection to 192) checks the plumbing:
    input layout (1, frames, 80), mean normalisation over time, output (1, 192)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from decoder.step_audio.frontend import CampPlus

    w = np.random.default_rng(0).standard_normal((80, 192)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMax", ["feats"], ["m"], axes=[1], keepdims=0),
         helper.make_node("MatMul", ["m", "w"], ["embs"])],
        "campplus_stub",
        [helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, None, 80])],
        [helper.make_tensor_value_info("embs", TensorProto.FLOAT, [1, 192])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "campplus.onnx")
    emb = CampPlus(tmp_path / "campplus.onnx").embed(ref["fe_wav16"])
    fb = ref["fe_fbank"]
    expected = ((fb - fb.mean(dim=0, keepdim=True)).max(dim=0).values.numpy() @ w)[None]
    assert emb.shape == (1, 192)
    assert np.abs(emb.numpy() - expected).max() < 1e-2
