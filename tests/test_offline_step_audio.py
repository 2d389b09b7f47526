"""`step-realtime chat` and `tts` on configs/step-audio.yaml with the tiny random Step-Audio models:
the tiny speech tokenizer, a local OpenAI-compatible server standing in for vLLM (Step-Audio-Chat's
completions and ASR, TTS-3B's audio codes and /tokenize), and the tiny CosyVoice flow + HiFT.
The prompts TTS-3B receives are checked id by id against the reference's layout (tts_prompt.py)."""
from __future__ import annotations

import asyncio
import json
import threading
import wave
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("kaldi_native_fbank")

from decoder.step_audio import tags  # noqa: E402
from decoder.step_audio.prompt_codes import SpeechTokenizerCodes  # noqa: E402
from decoder.step_audio.speakers import read_wav  # noqa: E402
from decoder.step_audio.tts_prompt import SYS_PROMPT_RAP, build_prompt_ids  # noqa: E402
from realtime.audio_files import read_audio  # noqa: E402
from realtime.cli import main  # noqa: E402
from streaming_tokenizer.step_audio.transcript import ASR_PROMPT  # noqa: E402
from tests.fixtures.completions_server import CompletionsServer  # noqa: E402
from tests.fixtures.step_audio_tiny import speechlike, write_tiny_tokenizer  # noqa: E402
from tests.realtime_util import REPO  # noqa: E402
from tests.step_audio_fixtures import FIX, _one_torch_thread, models  # noqa: E402,F401 (fixtures)

A = 65536
N_CODES = 30
CODES_TEXT = " ".join(f"<audio_{(i * 37 + 11) % 500}>" for i in range(N_CODES))  # no repeats: no RAS restarts
TRANSCRIPTS = ["你好 世界。", "再见。"]
REPLY = "好的。 Here you go."
SPF = 256  # samples per mel frame


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return write_tiny_tokenizer(tmp_path_factory.mktemp("offline_tokenizer"), seed=5)


@pytest.fixture(scope="module")
def wide_flow_dir(tmp_path_factory):
    """The tiny CosyVoice model with its token embedding widened from 512 to the speech tokenizer's
    5120 codes (1024 linguistic + 4096 semantic), so a cloned prompt's codes can be embedded."""
    import shutil

    import torch

    root = tmp_path_factory.mktemp("wide_flow")
    shutil.copy(FIX / "model" / "hift.pt", root / "hift.pt")
    state = torch.load(FIX / "model" / "flow.pt", weights_only=True)
    state["input_embedding.weight"] = state["input_embedding.weight"].repeat(10, 1)
    torch.save(state, root / "flow.pt")
    yaml_text = (FIX / "model" / "cosyvoice.yaml").read_text()
    assert "vocab_size: 512" in yaml_text
    (root / "cosyvoice.yaml").write_text(yaml_text.replace("vocab_size: 512", "vocab_size: 5120"))
    return root


@contextmanager
def vllm_stand_in():
    """The stand-in server on its own loop in a thread: the command runs its own event loop."""
    server: CompletionsServer

    def reply_for(prompt):
        if isinstance(prompt, list):  # TTS-3B: token ids in, audio codes out
            return CODES_TEXT
        if ASR_PROMPT in prompt:  # Step-Audio-Chat as ASR, for the history's transcripts
            return TRANSCRIPTS[sum(ASR_PROMPT in str(r.prompt) for r in server.requests) - 1]
        return REPLY

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(CompletionsServer(reply_for).start(), loop).result(30)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)


def step_audio_args(server: CompletionsServer, tokenizer_dir: Path, **extra) -> list[str]:
    """configs/step-audio.yaml as shipped, pointed at the tiny models and the stand-in server."""
    values = {"tokenizer.model_dir": tokenizer_dir, "tokenizer.device": "cpu", "tokenizer.transcript": "chat",
              "tokenizer.chat.base_url": server.base_url, "llm.base_url": server.base_url,
              "decoder.model_dir": FIX / "model", "decoder.device": "cpu", "decoder.llm_base_url": server.base_url,
              "decoder.seed": 1, **extra}
    args = ["--config", str(REPO / "configs" / "step-audio.yaml")]
    for key, value in values.items():
        args += ["--set", f"{key}={value}"]
    return args


def tts_prompts(server: CompletionsServer) -> list[list[int]]:
    return [r.body["prompt"] for r in server.requests if isinstance(r.body.get("prompt"), list)]


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def write_wav(path: Path, audio: np.ndarray, rate: int, channels: int = 1) -> Path:
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(pcm, channels).tobytes())
    return path


# -- tts -------------------------------------------------------------------------------------

def test_tts_tags_go_to_tts3b_as_written_in_one_generation(tmp_path, tokenizer_dir, models, capsys):
    text = "(高兴1)(粤语)今天天气真好，我们出去走走吧。(开心)"
    out = tmp_path / "tts.wav"
    with vllm_stand_in() as server:
        assert main(["tts", *step_audio_args(server, tokenizer_dir), "--text", text, "--out", str(out)]) == 0
    # One generation for the whole text (a call would cut it into clauses), prompt id for id.
    [prompt] = tts_prompts(server)
    assert prompt == build_prompt_ids(CompletionsServer.token_ids, tags.parse(text))
    assert all(r.body["model"] == "Step-Audio-TTS-3B" for r in server.requests)
    [record] = json_lines(capsys.readouterr().out)
    assert record["tags"] == ["高兴1", "粤语"] and record["unknown_tags"] == []
    audio = read_audio(out, None)
    assert audio.rate == 22_050 and len(audio.pcm) == models.flow.mel_frames(N_CODES) * SPF
    assert np.abs(audio.pcm).max() > 0


def test_tts_rap_uses_the_rap_prompt_and_unknown_tags_are_reported(tmp_path, tokenizer_dir, capsys):
    text = "(开心)你好"
    with vllm_stand_in() as server:
        assert main(["tts", *step_audio_args(server, tokenizer_dir), "--text", "(RAP)我踏上自由的征途",
                     "--out", str(tmp_path / "rap.wav")]) == 0
        assert main(["tts", *step_audio_args(server, tokenizer_dir), "--text", text,
                     "--out", str(tmp_path / "u.wav")]) == 0
    rap, unknown = tts_prompts(server)
    system = CompletionsServer.token_ids("system\n" + SYS_PROMPT_RAP)
    assert rap[2:2 + len(system)] == system
    assert unknown == build_prompt_ids(CompletionsServer.token_ids, tags.parse(text))  # passed as written
    captured = capsys.readouterr()
    assert json_lines(captured.out)[1]["unknown_tags"] == ["开心"]
    assert "tags TTS-3B was not trained with, passed to it as written: (开心)" in captured.err


def _speaker_dir(path: Path) -> Path:
    path.mkdir()
    (path / "Tingting.json").write_text(json.dumps({"prompt_text": "你好", "prompt_codes": [A + 5, A + 7, 9]}))
    write_wav(path / "Tingting_prompt.wav", speechlike(1.0, seed=3, sample_rate=22_050) * 0.3, 22_050)
    return path


def test_tts_voice_names_a_speaker_of_the_speaker_dir(tmp_path, tokenizer_dir, capsys):
    speakers = _speaker_dir(tmp_path / "speakers")
    text = "(慢速1)欢迎光临"
    with vllm_stand_in() as server:
        args = step_audio_args(server, tokenizer_dir, **{"decoder.speaker_dir": speakers})
        assert main(["tts", *args, "--text", text, "--voice", "Tingting", "--out", str(tmp_path / "v.wav")]) == 0
        assert main(["tts", *args, "--text", text, "--voice", "Nobody", "--out", str(tmp_path / "n.wav")]) == 2
    [prompt] = tts_prompts(server)
    assert prompt == build_prompt_ids(CompletionsServer.token_ids, tags.parse(text), "Tingting", "你好",
                                      [A + 5, A + 7, A + 9])
    err = capsys.readouterr().err
    assert "step-realtime: tts: unknown voice 'Nobody' (voices: Tingting)" in err


def test_tts_clones_a_voice_from_a_prompt_recording(tmp_path, tokenizer_dir, wide_flow_dir, capsys):
    """As the reference's clone_dict: prompt codes from the speech tokenizer (the tokenizer stage's
    model_dir), the prompt text and codes as the speaker turn, no speaker named in the system prompt."""
    prompt_wav = write_wav(tmp_path / "prompt.wav", speechlike(1.5, seed=4, sample_rate=24_000) * 0.3, 24_000,
                           channels=2)
    prompt_text = "那等我们到海洋馆之后"
    text = "人活一辈子，总得是有高峰，有低谷。"
    with vllm_stand_in() as server:
        args = step_audio_args(server, tokenizer_dir, **{"decoder.model_dir": wide_flow_dir})
        assert main(["tts", *args, "--text", text, "--prompt-wav", str(prompt_wav),
                     "--prompt-text", prompt_text, "--out", str(tmp_path / "clone.wav")]) == 0
    audio, rate = read_wav(prompt_wav)
    codes = SpeechTokenizerCodes(str(tokenizer_dir))(audio, rate)
    assert len(codes) >= 5 * 10 and all(c >= A for c in codes)
    [prompt] = tts_prompts(server)
    assert prompt == build_prompt_ids(CompletionsServer.token_ids, tags.parse(text), "", prompt_text, codes)
    captured = capsys.readouterr()
    assert json_lines(captured.out)[0]["cloned_from"] == str(prompt_wav)
    assert "prompt.wav: mixed 2 channels to mono" in captured.err


def test_cloning_without_a_speech_tokenizer_is_a_clear_error(tmp_path, tokenizer_dir, capsys):
    prompt_wav = write_wav(tmp_path / "prompt.wav", speechlike(1.0, seed=4) * 0.3, 16_000)
    with vllm_stand_in() as server:
        args = step_audio_args(server, tokenizer_dir, **{"tokenizer.impl": "fake"})  # no tokenizer to borrow
        assert main(["tts", *args, "--text", "你好", "--prompt-wav", str(prompt_wav), "--prompt-text", "hi",
                     "--out", str(tmp_path / "c.wav")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("step-realtime: tts: cloning a voice from a prompt recording needs the Step-Audio "
                              "speech tokenizer: set decoder.tokenizer_model_dir")


# -- chat ------------------------------------------------------------------------------------

def test_chat_two_turns_on_the_step_audio_config(tmp_path, tokenizer_dir, models, capsys):
    first = write_wav(tmp_path / "first.wav", speechlike(2.0, seed=11, sample_rate=24_000) * 0.6, 24_000, channels=2)
    second = write_wav(tmp_path / "second.wav", speechlike(1.5, seed=12) * 0.6, 16_000)
    out = tmp_path / "out"
    with vllm_stand_in() as server:
        assert main(["chat", *step_audio_args(server, tokenizer_dir), "--in", str(first), "--in", str(second),
                     "--out-dir", str(out)]) == 0
    records = json_lines(capsys.readouterr().out)
    assert [(r["transcript"], r["reply"], r["status"]) for r in records] == [
        (TRANSCRIPTS[0], REPLY, "completed"), (TRANSCRIPTS[1], REPLY, "completed")]
    chat = [r for r in server.requests if isinstance(r.prompt, str) and ASR_PROMPT not in r.prompt]
    assert len(chat) == 2 and all(r.body["model"] == "step-audio-chat" for r in chat)
    # The second turn: the first as text (history), the new one as <audio_N> tokens.
    assert (f"<|BOT|>human\n{TRANSCRIPTS[0]}<|EOT|><|BOT|>assistant\n{REPLY}<|EOT|><|BOT|>human\n<audio_"
            in chat[1].prompt) and chat[1].prompt.endswith("<|EOT|><|BOT|>assistant\n")
    assert chat[0].prompt.count("<audio_") > chat[1].prompt.count("<audio_") > 5 * 10  # 2 s vs 1.5 s of speech
    for r in records:
        audio = read_audio(r["out"], None)
        # Two clauses ("好的。", "Here you go."), each its own TTS-3B generation, as in a call.
        assert audio.rate == 22_050 and len(audio.pcm) == 2 * models.flow.mel_frames(N_CODES) * SPF
        assert all(r["timings"][k] is not None for k in ("asr_ms", "llm_first_token_ms", "llm_ms",
                                                         "tts_first_audio_ms", "tts_ms"))
    assert len(tts_prompts(server)) == 4
