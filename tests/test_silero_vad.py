"""Silero VAD (vad.silero) on synthesized speech, silence and noise, with and without the gate."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.config import ConfigError
from core.stages import BuildEnv, build_stage
from tests.speech_util import espeak, frames, noise, silence

pytestmark = pytest.mark.integration
SENTENCE = "The weather is lovely today, let us go for a walk in the park."


def _model_file() -> Path:
    from core import assets

    try:  # the installed package's file directly: no copy into a cache for tests
        return assets.package_file(assets.ASSETS["silero-vad"].files[0].parts[0])
    except assets.AssetError as exc:
        pytest.skip(str(exc))


def _factory(**options):
    return build_stage("vad", "silero", {"model": str(_model_file()), **options},
                       BuildEnv(Path("/nonexistent-cache")))


def _probs(vad, audio: np.ndarray) -> np.ndarray:
    return np.array([vad.process(f) for f in frames(audio)])


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return espeak(SENTENCE)


def test_speech_is_likely_and_silence_and_noise_are_not(speech):
    vad = _factory(gate_aggressiveness=None).create()
    quiet = _probs(vad, silence(1.5))
    talk = _probs(vad, speech)
    after = _probs(vad, noise(3.0, dbfs=-45))
    assert quiet.max() < 0.2
    assert np.mean(talk > 0.5) > 0.6  # most 20 ms frames of a continuous sentence
    assert np.mean(after[25:] > 0.5) < 0.05  # noise after the sentence, past the model's decay


def test_gate_skips_silero_on_quiet_audio_but_not_on_speech(speech):
    factory = _factory(gate_aggressiveness=1)
    vad = factory.create()
    _probs(vad, silence(3.0))
    quiet_calls = factory.model.calls
    assert vad.skipped_frames > 100  # of 150 frames: all but the hangover
    assert quiet_calls < 30  # an ungated run makes 93 calls for 3 s
    before = vad.skipped_frames
    talk = _probs(vad, speech)
    assert np.mean(talk > 0.5) > 0.6
    assert factory.model.calls - quiet_calls >= len(speech) // 512 - 20  # ran on (nearly) all speech
    assert vad.skipped_frames - before < len(talk) // 4


def test_gate_does_not_change_what_is_detected(speech):
    audio = np.concatenate([silence(2.0), speech, noise(2.0, -50), speech, silence(1.0)])
    gated = _probs(_factory(gate_aggressiveness=1).create(), audio) > 0.5
    ungated = _probs(_factory(gate_aggressiveness=None).create(), audio) > 0.5
    assert np.mean(gated != ungated) < 0.02
    onset = len(silence(2.0)) // 320
    # the first speech frame: the same within one frame (Silero's state differs after a skip)
    assert abs(int(np.argmax(gated[onset:])) - int(np.argmax(ungated[onset:]))) <= 1


def test_sessions_keep_their_own_state(speech):
    factory = _factory(gate_aggressiveness=None)
    a, b = factory.create(), factory.create()
    alone = _probs(factory.create(), speech)
    quiet = frames(silence(len(speech) / 16000))
    together = []
    for f_speech, f_quiet in zip(frames(speech), quiet):
        together.append(a.process(f_speech))
        b.process(f_quiet)  # interleaved: must not leak into a's state
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_reset_starts_over(speech):
    vad = _factory(gate_aggressiveness=None).create()
    first = _probs(vad, speech)
    vad.reset()
    np.testing.assert_allclose(_probs(vad, speech), first, atol=1e-5)


def test_wrong_frame_size_and_bad_options():
    vad = _factory().create()
    with pytest.raises(ValueError, match="320"):
        vad.process(np.zeros(480, dtype=np.int16))
    with pytest.raises(ConfigError, match="gate_aggresiveness"):
        _factory(gate_aggresiveness=2)
    with pytest.raises(ConfigError, match="neither an embedded model"):
        build_stage("vad", "silero", {"model": "/nonexistent.onnx"}, BuildEnv(Path("/tmp")))


def test_torch_is_never_imported():
    code = ("import sys, numpy as np; from pathlib import Path\n"
            "from core.stages import BuildEnv, build_stage\n"
            f"f = build_stage('vad', 'silero', {{'model': {str(_model_file())!r}}}, BuildEnv(Path('/tmp')))\n"
            "v = f.create(); [v.process(np.zeros(320, np.int16)) for _ in range(10)]\n"
            "assert 'torch' not in sys.modules and 'silero_vad' not in sys.modules\n")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
