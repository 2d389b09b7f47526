"""streaming_tokenizer.step_audio on tiny random weights in the published directory layout."""
from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("kaldi_native_fbank")

from core.config import ConfigError  # noqa: E402
from core.stages import BuildEnv, build_stage  # noqa: E402
from streaming_tokenizer.step_audio import Options, load_models  # noqa: E402
from streaming_tokenizer.step_audio.interleave import interleave, render, token_ids  # noqa: E402
from streaming_tokenizer.step_audio.loader import ModelDirError  # noqa: E402
from tests.fixtures.step_audio_tiny import PARAFORMER_SUBDIR, speechlike, write_tiny_tokenizer  # noqa: E402

FRAME = 320


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_tokenizer(tmp_path_factory.mktemp("step_audio_tokenizer"), seed=1)


@pytest.fixture(scope="module")
def factory(tiny_dir):
    fac = build_stage("tokenizer", "step-audio", {"model_dir": str(tiny_dir), "device": "cpu", "transcript": "none",
                                                  "semantic_segment_s": 2.0}, BuildEnv(tiny_dir))
    yield fac
    fac.executor.shutdown(wait=True)


def int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)


async def push_frames(tok, pcm: np.ndarray) -> None:
    for i in range(0, len(pcm) - len(pcm) % FRAME, FRAME):
        tok.push(pcm[i:i + FRAME])
        if i % (FRAME * 10) == 0:
            await asyncio.sleep(0)  # let the background drain run, as a live caller would


def batch_tokens(models, pcm: np.ndarray) -> tuple[int, ...]:
    ling, sem = models.tokenize(pcm)
    return tuple(interleave(ling, sem))


def test_rates_over_ten_seconds(factory):
    ling, sem = factory.models.tokenize(speechlike(10.0, seed=2))
    assert abs(len(ling) - 10 * 1000 / 60) <= 1  # 16.7 Hz
    assert abs(len(sem) - 10 * 25) <= 1  # 25 Hz
    assert all(0 <= c < 1024 for c in ling) and all(0 <= c < 4096 for c in sem)
    assert len(set(ling)) > 5 and len(set(sem)) > 5  # really computed, not constant


def test_interleave_two_to_three_and_offsets():
    ling, sem = [10, 11, 12, 13, 14], [0, 1, 2, 3, 4, 5, 4095]
    out = interleave(ling, sem)
    assert out == [10, 11, 1024, 1025, 1026, 12, 13, 1027, 1028, 1029]  # 2 whole groups; leftovers wait
    assert render(out[:3]) == "<audio_10><audio_11><audio_1024>"
    assert token_ids(out[:3]) == [65546, 65547, 66560]
    assert interleave(ling, sem, start_group=1) == out[5:]
    assert interleave([1], [1, 2, 3]) == []


def test_interleaved_tokens_follow_the_pattern(factory):
    ling, sem = factory.models.tokenize(speechlike(3.0, seed=3))
    out = interleave(ling, sem)
    assert len(out) == 5 * min(len(ling) // 2, len(sem) // 3)
    for g in range(len(out) // 5):
        group = out[5 * g:5 * g + 5]
        assert group[:2] == ling[2 * g:2 * g + 2]
        assert [n - 1024 for n in group[2:]] == sem[3 * g:3 * g + 3]
        assert all(n < 1024 for n in group[:2]) and all(1024 <= n < 1024 + 4096 for n in group[2:])


@pytest.mark.parametrize("seconds", [10.0, 2.4, 1.3])
async def test_streaming_frames_equal_the_batch_call(factory, seconds):
    pcm = int16(speechlike(seconds, seed=4))
    tok = factory.create()
    await push_frames(tok, pcm)
    user = await tok.finalize()
    assert user.audio_tokens == batch_tokens(factory.models, pcm)
    assert user.speech_seconds == pytest.approx(len(pcm) / 16000)
    assert user.prompt_text().startswith("<audio_") and user.text == ""


async def test_codes_are_computed_while_the_user_speaks(factory):
    tok = factory.create()
    await push_frames(tok, int16(speechlike(5.0, seed=5)))
    if tok._work is not None:
        await tok._work
    # Before any finalize(): whole chunks and whole segments are already encoded.
    assert len(tok._streams.linguistic.codes) >= 80
    assert len(tok._streams.semantic.codes) == 100  # two 2 s segments


async def test_finalize_at_a_pause_then_more_speech(factory):
    """A pause's finalize must not disturb the stream: the final tokens equal the batch call."""
    pcm = int16(speechlike(6.5, seed=6))
    tok = factory.create()
    await push_frames(tok, pcm[:16000 * 3 + 960])
    at_pause = await tok.finalize()
    assert at_pause.audio_tokens == batch_tokens(factory.models, pcm[:16000 * 3 + 960])
    await push_frames(tok, pcm[16000 * 3 + 960:])
    final = await tok.finalize()
    assert final.audio_tokens == batch_tokens(factory.models, pcm[: len(pcm) - len(pcm) % FRAME])
    # Groups within the first, completed 2 s semantic segment never change; the pause's partial
    # segment was tokenized on its own, so codes after it may (the segment-length trade-off).
    stable = 5 * (50 // 3)
    assert final.audio_tokens[:stable] == at_pause.audio_tokens[:stable]


async def test_finalize_again_without_new_audio_does_no_model_work(factory, monkeypatch):
    tok = factory.create()
    await push_frames(tok, int16(speechlike(2.5, seed=7)))
    first = await tok.finalize()
    calls = []
    monkeypatch.setattr(factory.models.semantic, "tokenize_segment", lambda s: calls.append(s) or [])
    monkeypatch.setattr(factory.models.linguistic, "_encode", lambda *a, **k: calls.append(a) or [])
    again = await tok.finalize()
    assert again == first and calls == []


async def test_reset_starts_a_new_turn(factory):
    a, b = int16(speechlike(2.0, seed=8)), int16(speechlike(1.7, seed=9))
    tok = factory.create()
    await push_frames(tok, a)
    await tok.finalize()
    tok.reset()
    await push_frames(tok, b)
    assert (await tok.finalize()).audio_tokens == batch_tokens(factory.models, b)


async def test_any_rate_channels_and_sample_format(factory):
    x = speechlike(3.0, seed=10)
    pcm = int16(x)
    as_float = factory.create()
    as_float.push_audio(pcm.astype(np.float32) / 32768.0, 16000)  # float in, same samples
    assert (await as_float.finalize()).audio_tokens == batch_tokens(factory.models, pcm)

    x48 = _resample(x, 48000)
    hi_mono, hi_stereo = factory.create(), factory.create()
    for i in range(0, len(x48), 960):  # 20 ms at 48 kHz: int16 mono, and float stereo (same on both channels)
        hi_mono.push_audio(int16(x48[i:i + 960]), 48000)
        hi_stereo.push_audio(np.stack([x48[i:i + 960]] * 2, axis=1), 48000)
    mono_user, stereo_user = await hi_mono.finalize(), await hi_stereo.finalize()
    # 48 kHz in comes out at the 16 kHz rates (the resampler holds back a few ms at the end).
    assert abs(mono_user.speech_seconds - 3.0) < 0.05
    assert abs(len(mono_user.audio_tokens) - len(batch_tokens(factory.models, pcm))) <= 5
    assert stereo_user.speech_seconds == mono_user.speech_seconds
    assert abs(len(stereo_user.audio_tokens) - len(mono_user.audio_tokens)) <= 5


def _resample(x: np.ndarray, rate: int) -> np.ndarray:
    import soxr

    return soxr.resample(x, 16000, rate).astype(np.float32)


# -- model directories: clear errors ------------------------------------------------------------

@pytest.mark.parametrize("relpath, words", [
    (f"{PARAFORMER_SUBDIR}/model.pt", "Paraformer-online weights"),
    (f"{PARAFORMER_SUBDIR}/am.mvn", "CMVN"),
    (f"{PARAFORMER_SUBDIR}/config.yaml", "FunASR config"),
    ("linguistic_tokenizer.npy", "centroids"),
    ("speech_tokenizer_v1.onnx", "CosyVoice speech tokenizer"),
])
def test_missing_file_names_the_file(tmp_path, relpath, words):
    root = write_tiny_tokenizer(tmp_path / "tok", seed=2)
    (root / relpath).unlink()
    with pytest.raises(ModelDirError) as err:
        build_stage("tokenizer", "step-audio", {"model_dir": str(root), "transcript": "none"}, BuildEnv(tmp_path))
    assert relpath.split("/")[-1] in str(err.value) and words in str(err.value)
    assert isinstance(err.value, ConfigError)


def test_missing_directory(tmp_path):
    with pytest.raises(ModelDirError, match="not a directory.*Step-Audio-Tokenizer"):
        load_models(Options(model_dir=str(tmp_path / "nowhere"), transcript="none"))


def test_wrong_weights_and_shapes_are_named(tmp_path):
    import torch

    root = write_tiny_tokenizer(tmp_path / "tok", seed=3)
    pt = root / PARAFORMER_SUBDIR / "model.pt"
    state = torch.load(pt)
    del state["encoder.encoders.1.feed_forward.w_2.bias"]
    torch.save(state, pt)
    with pytest.raises(ModelDirError, match=r"missing encoder\.encoders\.1\.feed_forward\.w_2\.bias"):
        load_models(Options(model_dir=str(root), transcript="none", device="cpu"))

    root = write_tiny_tokenizer(tmp_path / "tok2", seed=3)
    np.save(root / "linguistic_tokenizer.npy", np.zeros((1000, 16), np.float32))
    with pytest.raises(ModelDirError, match=r"\(1000, 16\); expected \(1024, 16\)"):
        load_models(Options(model_dir=str(root), transcript="none", device="cpu"))

    root = write_tiny_tokenizer(tmp_path / "tok3", seed=3)
    (root / "speech_tokenizer_v1.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelDirError, match="speech_tokenizer_v1.onnx: not a loadable ONNX model"):
        load_models(Options(model_dir=str(root), transcript="none", device="cpu"))


def test_checkpoint_wrapped_in_state_dict_loads(tmp_path):
    import torch

    root = write_tiny_tokenizer(tmp_path / "tok", seed=4)
    pt = root / PARAFORMER_SUBDIR / "model.pt"
    torch.save({"state_dict": torch.load(pt)}, pt)
    ling, _ = load_models(Options(model_dir=str(root), transcript="none", device="cpu")).tokenize(speechlike(1.0))
    assert len(ling) == 17


def test_unknown_option_is_an_error(tiny_dir):
    with pytest.raises(ConfigError, match="tokenizer: segment_s"):
        build_stage("tokenizer", "step-audio", {"model_dir": str(tiny_dir), "segment_s": 3}, BuildEnv(tiny_dir))


def test_embedded_default_does_not_import_torch_or_onnx():
    code = ("import sys, core.stages, streaming_tokenizer.step_audio, llm.step_audio; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'kaldi_native_fbank') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- the step-audio config, end to end through the controller ----------------------------------

async def test_step_audio_config_end_to_end_through_the_controller(tmp_path):
    """configs/step-audio.yaml with the tiny tokenizer, the chat client against a local
    OpenAI-compatible server (which also answers the Step-Audio-Chat ASR request), and the
    fake decoder standing in for Step-Audio-TTS-3B."""
    import re
    from pathlib import Path

    from context.history import Context
    from controller.controller import Controller, Stages
    from controller.events import ResponseDone, Speculation
    from decoder.fake import FakeDecoder
    from realtime.config import load_config
    from streaming_tokenizer.step_audio.transcript import ASR_PROMPT
    from tests.fakes import QUIET, FakeOutput, frames, wait_until
    from tests.fixtures.completions_server import CompletionsServer
    from vad.energy import EnergyVad

    root = write_tiny_tokenizer(tmp_path / "Step-Audio-Tokenizer", seed=5)
    server = await CompletionsServer(lambda p: "你好 世界。" if ASR_PROMPT in p else "Sure. Here you go.").start()
    config = Path(__file__).resolve().parents[1] / "configs" / "step-audio.yaml"
    cfg = load_config(config, {"tokenizer.model_dir": str(root), "tokenizer.device": "cpu",
                               "tokenizer.transcript": "chat", "tokenizer.chat.base_url": server.base_url,
                               "llm.base_url": server.base_url})
    env = BuildEnv(tmp_path)
    tokenizers = build_stage("tokenizer", cfg.tokenizer.impl, cfg.tokenizer.options(), env)
    llm = build_stage("llm", cfg.llm.impl, cfg.llm.options(), env)
    events: list = []
    out = FakeOutput()
    ctx = Context(cfg.context.system_prompt, cfg.context.max_prompt_tokens)
    ctrl = Controller(Stages(EnergyVad(), tokenizers.create(), llm, FakeDecoder()), ctx, out, events.append,
                      cfg.controller)
    try:
        speech = np.clip(np.round(speechlike(2.0, seed=11) * 20000), -32768, 32767).astype(np.int16)
        for i in range(0, len(speech), FRAME):
            ctrl.push_audio(np.maximum(np.abs(speech[i:i + FRAME]), 3000).astype(np.int16))  # loud throughout
            await asyncio.sleep(0)
        await frames(ctrl, QUIET, 800)
        await wait_until(lambda: any(isinstance(e, ResponseDone) for e in events), timeout=60)
    finally:
        await ctrl.close()
        await llm.close()
        await tokenizers.close()
        await server.close()

    done = [e for e in events if isinstance(e, ResponseDone)]
    assert done[0].status == "completed" and done[0].text == "Sure. Here you go."
    assert [e.action for e in events if isinstance(e, Speculation)][-1] == "committed"
    asr = [r for r in server.requests if ASR_PROMPT in r.prompt]
    chat = [r for r in server.requests if ASR_PROMPT not in r.prompt]
    assert asr and chat and all(r.body["model"] == "step-audio-chat" for r in server.requests)
    prompt = chat[-1].prompt
    assert prompt.startswith(f"<|BOT|>system\n{cfg.context.system_prompt}<|EOT|><|BOT|>human\n<audio_")
    assert prompt.endswith("<|EOT|><|BOT|>assistant\n")
    numbers = [int(n) for n in re.findall(r"<audio_(\d+)>", prompt)]
    assert len(numbers) % 5 == 0 and len(numbers) >= 5 * 12  # ≥ 1.4 s of speech in 120 ms groups
    assert all(n < 1024 for g in range(0, len(numbers), 5) for n in numbers[g:g + 2])
    assert all(1024 <= n < 5120 for g in range(0, len(numbers), 5) for n in numbers[g + 2:g + 5])
    assert [(t.role, t.text) for t in ctx.turns] == [("user", "你好 世界。"), ("assistant", "Sure. Here you go.")]


async def test_transcript_from_a_composed_tokenizer(factory):
    """transcript: whisper composes any TokenizerFactory; here the fake one stands in for whisper."""
    from streaming_tokenizer.fake import FakeTokenizerFactory
    from streaming_tokenizer.step_audio import StepAudioTokenizerFactory
    from streaming_tokenizer.step_audio.transcript import WhisperTranscriber

    inner = FakeTokenizerFactory()
    composed = StepAudioTokenizerFactory(factory.models, WhisperTranscriber(inner))
    try:
        tok = composed.create()
        pcm = int16(speechlike(2.0, seed=12))
        loud = np.where(np.abs(pcm) < 3000, 3000, pcm).astype(np.int16)
        await push_frames(tok, loud)
        user = await tok.finalize()
        assert inner.created[0].frames == len(loud) // FRAME  # every frame reached the inner tokenizer
        assert user.text == " ".join(f"w{i}" for i in range(len(loud) // FRAME // 10))
        assert user.audio_tokens == batch_tokens(factory.models, loud)
        tok.reset()
        assert inner.created[0].frames == 0
    finally:
        composed.executor.shutdown(wait=True)
