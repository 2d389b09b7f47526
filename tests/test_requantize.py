"""core.requantize: the bundled SmolLM2's Q4_1 weights rewritten as Q4_0, close to the originals."""
from __future__ import annotations

import numpy as np
import pytest

from core import assets
from core.requantize import requantize

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def q4_1(tmp_path_factory):
    try:
        return assets.ensure("smollm2-135m", tmp_path_factory.mktemp("models"), progress=lambda m: None)
    except assets.AssetError as exc:
        pytest.skip(f"{exc}")


@pytest.mark.integration
def test_q4_1_tensors_become_q4_0_within_a_quantization_step_the_rest_unchanged(q4_1, tmp_path):
    out = tmp_path / "q4_0.gguf"
    counts = requantize(q4_1, out)
    assert counts["Q4_1"] > 100
    src, dst = gguf.GGUFReader(q4_1), gguf.GGUFReader(out)
    assert dst.fields["general.file_type"].contents() == 2  # MOSTLY_Q4_0
    assert dst.fields["tokenizer.chat_template"].contents() == src.fields["tokenizer.chat_template"].contents()
    assert [t.name for t in dst.tensors] == [t.name for t in src.tensors]
    Q41, Q40 = gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.Q4_0
    for a, b in zip(src.tensors, dst.tensors):
        if a.tensor_type != Q41:
            assert b.tensor_type == a.tensor_type and np.array_equal(a.data, b.data), a.name
            continue
        assert b.tensor_type == Q40, a.name
        x = gguf.quants.dequantize(a.data, Q41).reshape(-1, 32)
        y = gguf.quants.dequantize(b.data, Q40).reshape(-1, 32)
        # Q4_0 has 16 levels spanning ±max|x| per block of 32: each weight moves at most one step.
        step = np.abs(x).max(axis=1, keepdims=True) / 8
        assert np.all(np.abs(x - y) <= step * 1.01 + 1e-6), a.name
        assert np.abs(x - y).mean() < np.abs(x).mean() / 4, a.name  # and on average much less


@pytest.mark.integration
def test_the_conversion_is_deterministic_so_its_sha256_can_be_pinned(q4_1, tmp_path):
    requantize(q4_1, tmp_path / "a.gguf")
    expected = assets.ASSETS["smollm2-135m-q4_0"].files[0].sha256
    assert assets._sha256(tmp_path / "a.gguf") == expected
