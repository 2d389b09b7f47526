"""step-realtime's command line: check-config, config errors, and `serve` as a real process."""
from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from realtime.cli import main
from tests.realtime_util import FAKE_CONFIG, REPO


def test_check_config_ok(capsys) -> None:
    assert main(["check-config", "--config", str(FAKE_CONFIG)]) == 0
    assert "ok" in capsys.readouterr().out


def test_check_config_builds_fake_stages(capsys) -> None:
    assert main(["check-config", "--config", str(FAKE_CONFIG), "--build"]) == 0
    assert "FakeLLM" in capsys.readouterr().out


@pytest.mark.parametrize("text, words", [
    ("server: {port: 99999}\nvad: {impl: energy}\ntokenizer: {impl: fake}\nllm: {impl: fake}\ndecoder: {impl: fake}\n",
     "server.port"),
    ("vad: {impl: energy}\ntokenizer: {impl: fake}\nllm: {impl: nope}\ndecoder: {impl: fake}\n", "llm.impl"),
    ("vad: {impl: energy}\n", "tokenizer"),
    ("vad: [unclosed\n", "not valid YAML"),
    ("server: {bogus: 1}\nvad: {impl: energy}\ntokenizer: {impl: fake}\nllm: {impl: fake}\ndecoder: {impl: fake}\n",
     "server.bogus"),
])
def test_config_errors_are_one_line_and_exit_2(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "realtime.cli", "check-config", "--config", str(path)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert words in lines[0] and str(path) in lines[0]


def test_missing_config_file(capsys) -> None:
    assert main(["serve", "--config", "/nonexistent/step.yaml"]) == 2
    assert "no such config file" in capsys.readouterr().err


def test_bad_stage_option_fails_serve_with_exit_2(tmp_path: Path) -> None:
    """Stage options are checked by the stage's own builder when the server starts."""
    path = tmp_path / "bad.yaml"
    path.write_text("server: {auth: {enabled: false}}\nvad: {impl: energy, threshold_dbfs: loud}\ntokenizer: {impl: fake}\n"
                    "llm: {impl: fake}\ndecoder: {impl: fake}\n")
    proc = subprocess.run([sys.executable, "-m", "realtime.cli", "serve", "--config", str(path), "--port", "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "vad: threshold_dbfs" in proc.stderr


def test_serve_prints_the_url_and_stops_on_sigint() -> None:
    with subprocess.Popen([sys.executable, "-m", "realtime.cli", "serve", "--config", str(FAKE_CONFIG),
                           "--host", "127.0.0.1", "--port", "0"],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        _check_serving(proc)


def _check_serving(proc: subprocess.Popen) -> None:
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, f"no URL in {line!r}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}"
        with urllib.request.urlopen(f"http://127.0.0.1:{match.group(1)}/healthz", timeout=30) as r:
            health = json.load(r)
        assert health["ok"] and health["stages"]["llm"] == "FakeLLM"
        asyncio.run(_sigint_with_a_client_connected(proc, int(match.group(1))))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def _sigint_with_a_client_connected(proc: subprocess.Popen, port: int) -> None:
    """An open Realtime WebSocket must not hold the shutdown up (aiohttp would wait 60 s)."""
    async with aiohttp.ClientSession() as http, http.ws_connect(f"http://127.0.0.1:{port}/v1/realtime") as ws:
        assert json.loads((await ws.receive()).data)["type"] == "session.created"
        proc.send_signal(signal.SIGINT)
        closed = await asyncio.wait_for(ws.receive(), 20)
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert await asyncio.to_thread(proc.wait, 20) == 0


def test_port_in_use_is_one_line_and_exit_1() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "realtime.cli", "serve", "--config", str(FAKE_CONFIG),
                               "--port", str(port)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "cannot start" in proc.stderr and str(port) in proc.stderr
