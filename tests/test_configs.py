"""Every shipped config loads and validates; a broken one fails with a one-line reason."""
from pathlib import Path

import pytest

from realtime.config import ConfigError, load_config
from core.stages import BuildEnv, build_all

CONFIGS = sorted(Path(__file__).resolve().parent.parent.glob("configs/*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.controller.end_of_turn_ms > cfg.controller.pause_ms


def test_fake_config_builds_every_stage(tmp_path):
    stages = build_all(load_config(Path("configs/fake.yaml")), BuildEnv(cache_dir=tmp_path))
    assert set(stages) == {"vad", "tokenizer", "llm", "decoder"}


@pytest.mark.parametrize("text,where", [
    ("vad: {impl: nope}\ntokenizer: {impl: fake}\nllm: {impl: fake}\ndecoder: {impl: fake}\n", "vad.impl"),
    ("vad: {impl: energy, threshold_dbfs: loud}\ntokenizer: {impl: fake}\nllm: {impl: fake}\ndecoder: {impl: fake}\n",
     "threshold_dbfs"),
    ("vad: {impl: energy}\ntokenizer: {impl: fake}\nllm: {impl: fake}\ndecoder: {impl: fake}\n"
     "controller: {pause_ms: 800, end_of_turn_ms: 600}\n", "end_of_turn_ms"),
    ("vad: {impl: energy}\ntokenizer: {impl: fake}\nllm: {impl: fake}\ndecoder: {impl: fake}\nservr: {}\n", "servr"),
    ("vad: {impl: energy}\ntokenizer: {impl: fake}\nllm: {impl: fake}\ndecoder: {impl: fake}\n"
     "server: {ice_servers: [{username: u, credential: c}]}\n", "urls"),
])
def test_bad_configs_name_the_problem(tmp_path, text, where):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        build_all(load_config(path), BuildEnv(cache_dir=tmp_path))
    assert where in str(err.value) and "\n" not in str(err.value)


def test_ice_servers_take_urls_and_turn_credentials(tmp_path):
    from realtime.webrtc import ice_configuration

    path = tmp_path / "ice.yaml"
    path.write_text("vad: {impl: energy}\ntokenizer: {impl: fake}\nllm: {impl: fake}\ndecoder: {impl: fake}\n"
                    "server:\n  ice_servers:\n    - stun:stun.example.org:3478\n"
                    "    - {urls: [turn:turn.example.org:3478], username: alice, credential: secret}\n")
    ice = ice_configuration(load_config(path).server.ice_servers).iceServers
    assert [(s.urls, s.username, s.credential) for s in ice] == [
        ("stun:stun.example.org:3478", None, None), (["turn:turn.example.org:3478"], "alice", "secret")]
