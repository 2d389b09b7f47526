"""Smart Turn v3.2 on onnxruntime (vad/smart_turn.py): our features equal the reference feature
code that ships beside the model in pipecat's wheel, and the real model tells a finished
sentence from one cut off, run through the scheduler's "turn" lane."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from core import assets
from core.scheduler import Scheduler
from tests.speech_util import piper, silence
from vad.smart_turn import Options, SmartTurn

SOURCE = assets.ASSETS["smart-turn-v3.2"].files[0].parts[0]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> SmartTurn:
    path = assets.ensure("smart-turn-v3.2", tmp_path_factory.mktemp("models"), progress=lambda m: None)
    return SmartTurn(path, Options(), Scheduler())


def reference_features():
    """pipecat's numpy feature code, loaded from the installed wheel by path (its package
    __init__ would import the whole framework)."""
    path = assets.package_file(SOURCE).parent.parent / "_whisper_features.py"
    spec = importlib.util.spec_from_file_location("smart_turn_reference_features", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.compute_whisper_log_mel_features


def test_the_model_file_is_pinned() -> None:
    f = assets.ASSETS["smart-turn-v3.2"].files[0]
    assert f.sha256 == "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
    assert SOURCE.requirement == "pipecat-ai==1.14.0"


@pytest.mark.parametrize("seconds", [1.5, 8.0, 11.0])
def test_features_match_the_reference(model: SmartTurn, seconds: float) -> None:
    rng = np.random.default_rng(int(seconds * 10))
    audio = (rng.standard_normal(int(seconds * 16000)) * 3000).astype(np.int16)
    audio[: len(audio) // 3] = 0  # some silence, as at a pause
    x = audio.astype(np.float32) / 32768.0
    x = x[-128000:]
    x = np.concatenate([np.zeros(128000 - len(x), np.float32), x])  # the model's left padding
    ours = model.features(audio)
    assert ours.shape == (80, 800) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference_features()(x), atol=1e-4)


@pytest.mark.integration
async def test_finished_and_unfinished_speech(model: SmartTurn) -> None:
    finished = np.concatenate([piper("Can you recommend some music for studying?"), silence(0.1)])
    unfinished = np.concatenate([piper("So, um,"), silence(0.1)])
    p_finished = await model.completion(finished)
    p_unfinished = await model.completion(unfinished)
    assert p_finished > 0.8 > 0.2 > p_unfinished, (p_finished, p_unfinished)
    assert model.lane.jobs == 2  # through the scheduler, like every model call
