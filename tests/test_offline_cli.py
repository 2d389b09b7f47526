"""The offline commands `step-realtime chat` and `tts` (realtime/offline.py, offline_tts.py):
on the fake stages and errors (fast), on the embedded default (integration: a spoken question
in, a spoken answer out) and on configs/step-audio.yaml with the tiny random Step-Audio
models (tests/test_offline_step_audio.py)."""
from __future__ import annotations

import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from realtime.audio_files import read_audio, write_wav
from realtime.cli import main
from tests.realtime_util import FAKE_CONFIG, REPO

DEFAULT_CONFIG = REPO / "configs" / "default.yaml"


def write_stereo(path: Path, mono: np.ndarray, rate: int) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(mono.astype("<i2"), 2).tobytes())
    return path


def tone(seconds: float, rate: int, freq: float = 300.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# -- fake stages: the command's plumbing -----------------------------------------------------

def test_chat_turns_write_replies_and_json_lines(tmp_path, capsys):
    first = tmp_path / "first.wav"
    write_wav(first, tone(1.0, 16_000), 16_000)
    second = write_stereo(tmp_path / "second.wav", tone(2.0, 44_100), 44_100)  # converted, not refused
    out = tmp_path / "out"
    assert main(["chat", "--config", str(FAKE_CONFIG), "--in", str(first), "--in", str(second),
                 "--out-dir", str(out)]) == 0
    captured = capsys.readouterr()
    records = json_lines(captured.out)
    assert [r["turn"] for r in records] == [1, 2] and all(r["status"] == "completed" for r in records)
    # The fake tokenizer writes a word per 200 ms of loud audio: the 2 s file really was one turn.
    assert len(records[0]["transcript"].split()) == 5 and len(records[1]["transcript"].split()) == 10
    assert records[1]["reply"] == f"You said: {records[1]['transcript']}."  # the echo LLM saw turn 2 last
    for r in records:
        assert set(r["timings"]) >= {"asr_ms", "llm_first_token_ms", "llm_ms", "tts_first_audio_ms", "tts_ms"}
        assert r["timings"]["llm_ms"] >= r["timings"]["llm_first_token_ms"] >= 0
        reply = read_audio(r["out"], None)
        assert reply.rate == r["sample_rate"] and abs(reply.seconds - r["audio_s"]) < 0.01 and reply.seconds > 0.3
    assert json_lines((out / "turns.jsonl").read_text()) == records
    assert "mixed 2 channels to mono, resampled 44100 Hz to 16000 Hz" in captured.err


def test_a_silent_file_is_reported_and_fails_the_run(tmp_path, capsys):
    quiet = tmp_path / "quiet.wav"
    write_wav(quiet, np.zeros(16_000, np.int16), 16_000)
    assert main(["chat", "--config", str(FAKE_CONFIG), "--in", str(quiet), "--out-dir", str(tmp_path / "o")]) == 1
    captured = capsys.readouterr()
    [record] = json_lines(captured.out)
    assert record["status"] == "empty" and "nothing was understood" in captured.err
    assert not (tmp_path / "o" / "reply_01.wav").exists()


@pytest.mark.parametrize("make, words", [
    (lambda d: d / "missing.wav", "missing.wav: no such file"),
    (lambda d: (d / "notes.wav").write_text("not audio at all " * 20) and d / "notes.wav",
     "notes.wav: not an audio file we can read"),
    (lambda d: d, "not a file"),
])
def test_bad_input_files_are_one_line_and_exit_2(tmp_path, capsys, make, words):
    path = make(tmp_path)
    assert main(["chat", "--config", str(FAKE_CONFIG), "--in", str(path), "--out-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("step-realtime: chat: ") and words in err[0]


def test_bad_input_from_the_shell_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "realtime.cli", "chat", "--config", str(FAKE_CONFIG),
                           "--in", str(tmp_path / "q.wav"), "--out-dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"step-realtime: chat: {tmp_path / 'q.wav'}: no such file"


def test_set_overrides_a_config_value(tmp_path, capsys):
    q = tmp_path / "q.wav"
    write_wav(q, tone(1.0, 16_000), 16_000)
    assert main(["chat", "--config", str(FAKE_CONFIG), "--set", "llm.reply=Fixed answer.", "--set", "llm.echo=false",
                 "--in", str(q), "--out-dir", str(tmp_path)]) == 0
    assert json_lines(capsys.readouterr().out)[0]["reply"] == "Fixed answer."
    assert main(["chat", "--config", str(FAKE_CONFIG), "--set", "llm.echo", "--in", str(q),
                 "--out-dir", str(tmp_path)]) == 2
    assert "--set llm.echo: expected KEY=VALUE" in capsys.readouterr().err


def test_tts_reports_the_tags_a_decoder_cannot_honour(tmp_path, capsys):
    out = tmp_path / "t.wav"
    assert main(["tts", "--config", str(FAKE_CONFIG), "--text", "(高兴1)(粤语)Hello there.", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    [record] = json_lines(captured.out)
    assert record["ignored_tags"] == ["高兴1", "粤语"] and record["honoured_tags"] == []
    assert "ignored tags the embedded voice cannot honour: (高兴1) (粤语)" in captured.err
    assert read_audio(out, None).seconds == pytest.approx(record["audio_s"], abs=0.01) and record["audio_s"] > 0


@pytest.mark.parametrize("args, words", [
    (["--text", "  "], "--text is empty"),
    (["--text", "(高兴1)"], "nothing to say"),
    (["--text", "Hi", "--prompt-wav", "p.wav"], "--prompt-wav and --prompt-text go together"),
    (["--text", "Hi", "--voice", "nobody"], "unknown voice 'nobody' (embedded voices: piper-joe"),
    (["--text", "Hi", "--voice", "/nowhere/v.onnx"], "no such voice file"),
    (["--text", "Hi", "--prompt-wav", "p.wav", "--prompt-text", "hi"], "cannot clone a voice"),
])
def test_tts_input_errors_exit_2_before_any_model_loads(tmp_path, capsys, args, words):
    """On the embedded default's config: each is refused before piper would be loaded."""
    assert main(["tts", "--config", str(DEFAULT_CONFIG), *args, "--out", str(tmp_path / "t.wav")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("step-realtime: tts: ") and words in err[0]


# -- the embedded default: real models ------------------------------------------------------

def _llama_server_or_skip() -> None:
    from llm.llama_server import binary_missing_reason

    reason = binary_missing_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def whisper_model():
    from faster_whisper import WhisperModel

    from core import assets

    path = assets.ensure("whisper-base", Path("~/.cache/step-realtime").expanduser(), progress=lambda m: None)
    return WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=2)


def transcribe(model, path: str) -> str:
    audio = read_audio(path, 16_000).pcm.astype(np.float32) / 32768.0
    segments, _ = model.transcribe(audio, language="en", beam_size=1, without_timestamps=True)
    return " ".join(s.text.strip() for s in segments)


def heard(words_said: str, transcript: str) -> float:
    """Share of the words said that a transcript of the audio contains."""
    from tests.speech_util import words

    said, got = words(words_said), set(words(transcript))
    return sum(w in got for w in said) / max(1, len(said))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "realtime.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.integration
def test_chat_on_the_embedded_default_answers_a_spoken_question(tmp_path, whisper_model):
    from tests.speech_util import espeak

    _llama_server_or_skip()
    question = tmp_path / "question.wav"
    write_stereo(question, espeak("What is the capital of France?"), 16_000)  # stereo: converted
    # Greedy decoding: at the default temperature SmolLM2 now and then answers in French, which the
    # English voice and Whisper then garble; the pipeline is what is tested here, not the model.
    proc = run_cli("chat", "--in", str(question), "--out-dir", str(tmp_path / "out"), "--set", "llm.temperature=0")
    assert proc.returncode == 0, proc.stderr
    [record] = json_lines(proc.stdout)
    assert {"capital", "france"} <= set(record["transcript"].lower().replace("?", "").split()), record
    assert record["status"] == "completed" and record["reply"].strip()
    assert all(record["timings"][k] is not None for k in ("asr_ms", "llm_first_token_ms", "llm_ms",
                                                          "tts_first_audio_ms", "tts_ms"))
    # A spoken answer: the reply WAV, transcribed, says (most of) the reply text.
    assert record["sample_rate"] == 22_050 and record["audio_s"] > 0.5
    said = transcribe(whisper_model, record["out"])
    assert heard(record["reply"], said) >= 0.6, (record["reply"], said)


@pytest.mark.integration
def test_tts_on_the_embedded_default_honours_speed_and_reports_the_rest(tmp_path, whisper_model):
    text = "The weather is lovely today, let us go for a walk."
    plain = run_cli("tts", "--text", text, "--out", str(tmp_path / "plain.wav"))
    assert plain.returncode == 0, plain.stderr
    slow = run_cli("tts", "--text", f"(高兴1)(慢速2){text}", "--out", str(tmp_path / "slow.wav"))
    assert slow.returncode == 0, slow.stderr
    assert "ignored tags the embedded voice cannot honour: (高兴1)" in slow.stderr
    [record] = json_lines(slow.stdout)
    assert record["honoured_tags"] == ["慢速2"] and record["ignored_tags"] == ["高兴1"]
    # Slower speech, and the tags were not read aloud: the words are the text's.
    # 慢速2 = 0.65x speed (1.54x as long); piper's durations are sampled, so the margin is wide
    assert read_audio(tmp_path / "slow.wav", None).seconds > 1.2 * read_audio(tmp_path / "plain.wav", None).seconds
    said = transcribe(whisper_model, str(tmp_path / "slow.wav"))
    assert heard(text, said) >= 0.8, said
