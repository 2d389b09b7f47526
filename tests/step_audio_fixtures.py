"""Fixtures shared by the Step-Audio decoder tests (import them into a test module by name)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from decoder.step_audio.loader import load_models  # noqa: E402

FIX = Path(__file__).parent / "fixtures" / "step_audio_tts"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models on a shared, busy 2-core machine: extra intra-op threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ref():
    return {k: torch.from_numpy(v) for k, v in np.load(FIX / "reference.npz").items()}


@pytest.fixture(scope="module")
def models():
    return load_models(FIX / "model")
