"""The web client in a real headless Chromium, talking to the real server over WebRTC.

Chromium's fake microphone plays a WAV (looped); the page logs `STEP <kind>: <value>` console lines
that we read from Chromium's stderr: the user transcript, the reply transcript, the loudness of the
reply audio as the page's WebAudio AnalyserNode measured it, the controller states.

Set STEP_WEB_CLIENT_SCREENSHOT=docs/web_client.png to keep the mid-conversation screenshot.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.browser_util import (
    REPO, Chromium, find_chromium, floats, refusing_server, run_server, silence, speech_like, spoken_sentence, write_wav,
)

CHROMIUM = find_chromium()
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)"),
]

REPLY_AUDIO_RMS = 0.02  # the fake TTS tone is ≈0.065 RMS, real speech more; silence is ≈0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BROWSER_KEY = "sk-browser-test-0123456789"


def _nonempty(values: list[str]) -> list[str]:
    return [v.strip() for v in values if v.strip()]


def _reply_heard(b: Chromium) -> bool:
    return (bool(_nonempty(b.values("user_transcript")))
            and bool(_nonempty(b.values("assistant_transcript")))
            and any(x > REPLY_AUDIO_RMS for x in floats(b.values("reply_audio_rms")))
            and bool(b.values("turn_metrics")))


def _converse(config: str, wav: Path, tmp_path: Path, server_ready_s: float, reply_s: float) -> Chromium:
    """One call from the page to a `realtime.cli serve` subprocess; returns the finished browser
    (its collected lines stay readable) after taking a screenshot mid-conversation."""
    server_log = tmp_path / "server.log"
    keep_shot = os.environ.get("STEP_WEB_CLIENT_SCREENSHOT")
    # Auth on: the page exchanges the key for a client secret and calls with that (web_client/app.js).
    with run_server(config, ready_timeout_s=server_ready_s, log_path=server_log, api_key=BROWSER_KEY) as url:
        with Chromium(f"{url}/?autostart=1#key={BROWSER_KEY}", wav, tmp_path, executable=CHROMIUM) as browser:
            if not browser.wait_for(_reply_heard, reply_s):
                pytest.fail(f"no complete spoken reply within {reply_s} s\n{browser.report()}\n"
                            f"server log tail:\n{server_log.read_text(errors='replace')[-3000:]}")
            if keep_shot:  # best effort: catch the next reply while it plays, for a livelier picture
                replies = len(browser.values("first_audio_latency_ms"))
                browser.wait_for(lambda b: len(b.values("first_audio_latency_ms")) > replies, 30)
            shot = browser.screenshot(tmp_path / "web_client.png")
            # The Stop button ends the call.
            browser.evaluate("document.getElementById('start').click()")
            stopped = browser.wait_for(lambda b: b.values("connection")[-1:] == ["idle"], 30)
            button = browser.evaluate("document.getElementById('start').textContent")
    assert shot.read_bytes().startswith(PNG_MAGIC)
    assert stopped and button == "Start", browser.report()
    if keep_shot:
        shutil.copy(shot, REPO / keep_shot)
    return browser


def _common_checks(b: Chromium) -> None:
    report = b.report()
    assert not b.values("error"), f"the page showed errors\n{report}"
    assert "connected" in b.values("connection"), report
    states = b.values("state")
    assert "user_speaking" in states and "bot_replying" in states, report
    # The page's own latency measurement: speech_stopped → first audible reply audio.
    latencies = floats(b.values("first_audio_latency_ms"))
    assert latencies and all(ms >= 0 for ms in latencies), report
    metrics = json.loads(b.values("turn_metrics")[0])
    assert isinstance(metrics, dict) and metrics, report


def test_fake_stack_conversation(tmp_path):
    # A loud voiced burst (the energy VAD's "speech"), then silence long enough to end the turn.
    wav = write_wav(tmp_path / "mic.wav", np.concatenate([silence(0.5), speech_like(1.5), silence(3.0)]))
    b = _converse("configs/fake.yaml", wav, tmp_path, server_ready_s=60, reply_s=90)
    _common_checks(b)

    users = _nonempty(b.values("user_transcript"))
    # The fake tokenizer writes one word "wN" per 200 ms of loud audio: 1.5 s gives several.
    assert all(re.fullmatch(r"w0( w\d+)*", u) for u in users), b.report()
    assert any(len(u.split()) >= 3 for u in users), b.report()
    # The echo LLM repeats the input, so some reply must contain one of the user's transcripts.
    replies = _nonempty(b.values("assistant_transcript"))
    assert any(u in r for u in users for r in replies), b.report()


def test_refused_offer_is_shown_as_an_error(tmp_path):
    wav = write_wav(tmp_path / "mic.wav", silence(1.0))
    with refusing_server(503, "too many sessions") as url:
        with Chromium(f"{url}/?autostart=1", wav, tmp_path, executable=CHROMIUM) as b:
            # shown, and the half-made call torn down
            done = b.wait_for(lambda b: bool(b.values("error")) and "idle" in b.values("connection"), 60)
    assert done, b.report()
    assert "503" in b.values("error")[0] and "too many sessions" in b.values("error")[0], b.report()


@pytest.mark.integration
def test_default_stack_conversation(tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install -y espeak-ng)")
    # Long silence after the question: the WAV loops, and the reply should play out before the
    # question comes again (a barge-in would cut it short). A loaded 2-core machine can take
    # several seconds per reply.
    speech = spoken_sentence("What is the capital of France?")
    wav = write_wav(tmp_path / "mic.wav", np.concatenate([silence(0.5), speech, silence(15.0)]))
    b = _converse("configs/default.yaml", wav, tmp_path, server_ready_s=300, reply_s=240)
    _common_checks(b)

    users = " ".join(_nonempty(b.values("user_transcript"))).lower()
    assert "capital" in users or "france" in users, b.report()
    replies = _nonempty(b.values("assistant_transcript"))
    assert any(re.search(r"[a-z]{2,}", r.lower()) for r in replies), b.report()
