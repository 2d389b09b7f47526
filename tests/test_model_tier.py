"""The model tier on a real local Ray cluster: `step-realtime model-tier` starts `ray start --head`
(2 CPUs, no dashboard, a small object store) and deploys Whisper and piper as Serve applications;
the remote stages (ray-whisper, ray-piper) call them from this process, as a media worker does.

One cluster for the module (Ray starts slowly on 2 cores). Checked: remote results equal local
ones; turns of several sessions that finalize together are one batch on the replica; closing a
reply stops the replica's synthesis; a replica killed mid-reply fails that turn with a plain
`error`, Serve replaces it, and the call's next turn is answered.
"""
from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soxr

from tests.realtime_util import REPO, running_server, wait_until, ws_client
from tests.speech_util import piper, wer

if importlib.util.find_spec("ray") is None:  # under CI=true this skip fails the run (tests/conftest.py)
    pytest.skip("ray is not installed (make test installs requirements/ray.txt)", allow_module_level=True)

pytestmark = [pytest.mark.ray, pytest.mark.integration]

SENTENCES = ["What is the capital of France?", "Please turn on the kitchen lights.",
             "How is the weather today?", "Tell me a short story."]
# The same voice settings here and on the tier; noise 0 makes piper deterministic, so the remote
# audio can be compared sample for sample with the local one.
PIPER = {"voice": "piper-joe", "fallback": "espeak", "threads": 1, "noise_scale": 0.0, "noise_w_scale": 0.0}
WHISPER = {"model": "whisper-base", "cpu_threads": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tier_overrides(address: str) -> dict:
    return {"tokenizer.address": address, "decoder.address": address, "tokenizer.whisper": WHISPER,
            "decoder.piper": PIPER,
            # half a CPU each: a replacement replica fits while the dead one's resources are freed
            "tokenizer.deployment": {"num_cpus": 0.5, "max_batch_size": 8, "batch_wait_timeout_s": 0.02},
            "decoder.deployment": {"num_cpus": 0.5, "health_check_period_s": 1.0}}


def _set_args(overrides: dict) -> list[str]:
    import json

    return [a for key, value in overrides.items() for a in ("--set", f"{key}={json.dumps(value)}")]


@pytest.fixture(scope="module")
def tier():
    """The model tier as the operator starts it: a real process; stopped (SIGTERM) at the end."""
    address = f"127.0.0.1:{_free_port()}"
    cmd = [sys.executable, "-m", "realtime.cli", "model-tier", "--config", str(REPO / "configs" / "ray.yaml"),
           "--num-cpus", "2", "--object-store-mb", "100", *_set_args(tier_overrides(address))]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if line.startswith("model tier ready"):
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 300
    while not ready.wait(1):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            pytest.fail("the model tier did not start:\n" + "\n".join(lines[-30:]))
    from core import ray_serve

    ray_serve.connect(address)  # this process stays connected for the module's tests
    try:
        yield address
    finally:
        ray_serve.disconnect()
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the process group we started, if anything is left
    except (ProcessLookupError, PermissionError):
        pass


def _config(address: str, **more):
    from realtime.config import load_config

    return load_config(REPO / "configs" / "ray.yaml", {"server.port": 0, "server.auth.enabled": False, **tier_overrides(address), **more})


def _remote_stages(address: str):
    from core.stages import BuildEnv, build_stage

    cfg = _config(address)
    env = BuildEnv(cache_dir=cfg.cache_path)
    return (build_stage("tokenizer", "ray-whisper", cfg.tokenizer.options(), env),
            build_stage("decoder", "ray-piper", cfg.decoder.options(), env), cfg)


async def _stats(app: str) -> dict:
    from ray import serve

    return await serve.get_app_handle(app).stats.remote()


async def _text(text: str):
    for word in text.split(" "):
        yield word + " "


async def test_remote_results_equal_local_ones(tier):
    from core.stages import BuildEnv, build_stage

    tokenizers, decoder, cfg = _remote_stages(tier)
    local_env = BuildEnv(cache_dir=cfg.cache_path)
    local_asr = build_stage("tokenizer", "whisper", dict(WHISPER), local_env)
    local_tts = build_stage("decoder", "piper", {**PIPER, "first_clause_words": 3}, local_env)
    try:
        await decoder.start()
        for sentence in SENTENCES[:3]:
            remote, local = tokenizers.create(), local_asr.create()
            for tok in (remote, local):
                tok.push(piper(sentence))
            got, want = await remote.finalize(), await local.finalize()
            assert got.text == want.text and wer(sentence, got.text) <= 0.2, (got.text, want.text)
        reply = "Paris is the capital of France. It is known for the Eiffel Tower, and for its food."
        remote_chunks = [c async for c in decoder.synthesize(_text(reply))]
        local_chunks = [c async for c in local_tts.synthesize(_text(reply))]
        assert decoder.sample_rate == local_tts.sample_rate
        assert [c.text for c in remote_chunks] == [c.text for c in local_chunks]  # same clauses, same spans
        remote_pcm = np.concatenate([c.pcm for c in remote_chunks]).astype(np.int32)
        local_pcm = np.concatenate([c.pcm for c in local_chunks]).astype(np.int32)
        assert len(remote_pcm) == len(local_pcm) > decoder.sample_rate  # over a second of speech
        assert np.abs(remote_pcm - local_pcm).max() <= 2  # the same model and input: the same audio
    finally:
        await local_asr.close()
        await local_tts.close()
        await tokenizers.close()
        await decoder.close()


async def test_turns_that_finalize_together_are_batched_on_the_replica(tier):
    tokenizers, decoder, _ = _remote_stages(tier)
    try:
        before = (await _stats("asr"))["batch_sizes"]
        sessions = [tokenizers.create() for _ in SENTENCES]
        for session, sentence in zip(sessions, SENTENCES):
            session.push(piper(sentence))
        results = await asyncio.gather(*(s.finalize() for s in sessions))
        for sentence, result in zip(SENTENCES, results):
            assert wer(sentence, result.text) <= 0.25, result.text
        after = (await _stats("asr"))["batch_sizes"]
        new = {size: after.get(size, 0) - before.get(size, 0) for size in after}
        assert sum(size * n for size, n in new.items()) == len(SENTENCES)  # every turn transcribed once
        assert any(size > 1 and n > 0 for size, n in new.items()), new  # at least one batch of several
    finally:
        await tokenizers.close()
        await decoder.close()


async def test_closing_a_reply_stops_the_replicas_synthesis(tier):
    tokenizers, decoder, _ = _remote_stages(tier)
    sentences = " ".join(f"This is sentence number {n} of a long answer." for n in range(1, 13))
    try:
        await decoder.start()
        before = await _stats("tts")
        spans = decoder.span_audio(sentences)  # one clause of 12 sentences: one streaming request
        first = await spans.__anext__()
        assert len(first) > 0
        await spans.aclose()  # the reply is cancelled: the request is cancelled on the tier
        await wait_until_async(lambda s: s.get("stopped_early", 0) > before.get("stopped_early", 0), "tts",
                               what="the replica's generator to stop")
        after = await _stats("tts")
        assert after.get("pieces", 0) - before.get("pieces", 0) < 12  # it stopped before the end
        assert after.get("finished", 0) == before.get("finished", 0)
    finally:
        await tokenizers.close()
        await decoder.close()


async def wait_until_async(predicate, app: str, what: str, timeout: float = 60, every: float = 0.2) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        stats = await _stats(app)
        if predicate(stats):
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {stats}")
        await asyncio.sleep(every)


def _speech_24k(text: str) -> np.ndarray:
    pcm = soxr.resample(piper(text), 16_000, 24_000)
    return np.concatenate([np.zeros(4800, np.int16), pcm, np.zeros(36_000, np.int16)])


async def test_a_replica_killed_mid_reply_fails_that_turn_and_the_call_goes_on(tier):
    """A Realtime WebSocket call with remote ASR and TTS: the TTS replica is killed (SIGKILL)
    while the reply is being synthesized; the turn ends with a plain `error`, Serve starts a new
    replica, and the call's next turn is transcribed and answered with audio."""
    long_clause = " ".join(["and then the story goes on a little further"] * 12)  # seconds of synthesis
    cfg = _config(tier, **{"llm": {"impl": "fake", "reply": f"Well {long_clause}.", "token_delay_s": 0.001},
                           "turn": {"impl": "none"},
                           # no speculation: the reply is synthesized after the turn, while it plays
                           "controller.speculation": False})
    before = await _stats("tts")
    pid = before["pid"]
    async with running_server(cfg) as server, ws_client(server) as client:
        await client.send_audio(_speech_24k(SENTENCES[0]))
        heard = await client.next("conversation.item.input_audio_transcription.completed", timeout=120)
        assert wer(SENTENCES[0], heard["transcript"]) <= 0.2, heard["transcript"]
        await client.next("response.output_audio.delta", timeout=120)  # the reply's first words are playing
        # The reply's second clause (the long one) is being synthesized on the replica: kill it then.
        # (A request not yet accepted by a replica is re-routed by Serve to the new one instead.)
        await wait_until_async(lambda s: s.get("requests", 0) >= before.get("requests", 0) + 2
                               and s.get("requests", 0) > s.get("finished", 0) + s.get("stopped_early", 0),
                               "tts", what="the long clause on the replica", timeout=120, every=0.01)
        os.kill(pid, signal.SIGKILL)
        error = await client.next("error", timeout=120)
        message = error["error"]["message"]
        assert "speech synthesis" in message and "Traceback" not in message and "Ray" not in message, message
        # Serve replaces the replica (a new process); the call is still up
        await wait_until_async(lambda s: s["pid"] != pid, "tts", what="a new TTS replica", timeout=180)
        await client.send_audio(_speech_24k(SENTENCES[2]))
        heard = await client.next("conversation.item.input_audio_transcription.completed", timeout=120)
        assert wer(SENTENCES[2], heard["transcript"]) <= 0.2, heard["transcript"]
        done = await client.next("response.done", timeout=120)
        while client.index(done) < client.index(heard):  # the failed turn's own response.done came first
            done = await client.next("response.done", timeout=120)
        assert done["response"]["status"] == "completed", done["response"]
        deltas = [e for e in client.events[client.index(heard):] if e["type"] == "response.output_audio.delta"]
        assert deltas, "the next turn was answered with audio"


async def test_an_asr_replica_killed_during_a_turn_leaves_the_call_up(tier):
    """The ASR replica is killed (SIGKILL) as the caller stops talking, so the turn's
    transcription is in flight or about to be sent: that turn ends with a plain `error` (or, if
    Serve re-routed the request to the new replica, with its transcript), Serve starts a new
    replica, and the call's next turn is transcribed and answered."""
    cfg = _config(tier, **{"llm": {"impl": "fake", "reply": "Sure.", "token_delay_s": 0.001},
                           "turn": {"impl": "none"}})
    before = await _stats("asr")
    pid = before["pid"]
    async with running_server(cfg) as server, ws_client(server) as client:
        await client.send_audio(_speech_24k(SENTENCES[0]))
        await client.next("input_audio_buffer.speech_stopped", timeout=120)
        os.kill(pid, signal.SIGKILL)
        outcomes = ("error", "conversation.item.input_audio_transcription.completed")
        await wait_until(lambda: any(e["type"] in outcomes for e in client.events), timeout=120,
                         what="the killed turn's outcome")
        outcome = next(e for e in client.events if e["type"] in outcomes)
        if outcome["type"] == "error":
            message = outcome["error"]["message"]
            assert "speech recognition" in message and "Traceback" not in message and "Ray" not in message, message
        else:
            assert wer(SENTENCES[0], outcome["transcript"]) <= 0.2, outcome["transcript"]
        await wait_until_async(lambda s: s["pid"] != pid, "asr", what="a new ASR replica", timeout=180)
        start = len(client.events)
        await client.send_audio(_speech_24k(SENTENCES[2]))
        done = "conversation.item.input_audio_transcription.completed"
        await wait_until(lambda: any(e["type"] == done for e in client.events[start:]), timeout=120,
                         what="the next turn's transcript")
        heard = next(e for e in client.events[start:] if e["type"] == done)
        assert wer(SENTENCES[2], heard["transcript"]) <= 0.2, heard["transcript"]
        await wait_until(lambda: any(e["type"] == "response.done" and client.index(e) > client.index(heard)
                                     and e["response"]["status"] == "completed" for e in client.events),
                         timeout=120, what="the next turn's reply")


def test_model_tier_without_a_remote_stage_is_a_one_line_config_error():
    proc = subprocess.run([sys.executable, "-m", "realtime.cli", "model-tier", "--config",
                           str(REPO / "configs" / "default.yaml")], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "no remote stage" in proc.stderr and "Traceback" not in proc.stderr


def test_a_worker_whose_model_tier_is_down_fails_at_start_with_the_address():
    from core.config import ConfigError
    from core.stages import BuildEnv, build_stage

    address = f"127.0.0.1:{_free_port()}"  # nothing listens there
    with pytest.raises(ConfigError, match=address):
        build_stage("decoder", "ray-piper", {"address": address}, BuildEnv(cache_dir=REPO))
