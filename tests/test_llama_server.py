"""The bundled llama.cpp server (llm.llama_server) with SmolLM2-135M, through OpenAIChatClient."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import pytest
import pytest_asyncio

from llm.base import Message
from llm.llama_server import LlamaServer, LlamaServerError, llama_cpp_installed
from realtime.stages import BuildEnv, build_stage
from tests.aio_util import cancel_after_first

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not llama_cpp_installed(), reason="pip install 'llama-cpp-python[server]'"),
]
WAIT_S = 120
DISCONNECT_MARK = "Disconnected from client"  # what llama_cpp.server logs when a stream is dropped


def _gguf() -> Path:
    from realtime import assets

    try:  # the installed package's file directly: no copy into a cache for tests
        return assets.package_file(assets.ASSETS["smollm2-135m"].files[0].parts[0])
    except assets.AssetError as exc:
        pytest.skip(str(exc))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llama")
    llm = build_stage("llm", "openai", {"base_url": None, "model_path": str(_gguf()), "max_tokens": 48,
                                        "temperature": 0.0, "log_path": str(tmp / "server.log")}, BuildEnv(tmp))
    await llm.start()
    yield llm
    await llm.close()


def _log(client) -> str:
    return client.server.log_path.read_text(errors="replace")


def _accepts(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


@pytest.mark.asyncio(loop_scope="module")
async def test_server_answers_a_chat(client):
    assert client.server.running and client.base_url.startswith("http://127.0.0.1:")
    messages = [Message("system", "You are a helpful voice assistant. Answer in one short sentence."),
                Message("user", "What is the capital of France?")]
    text = "".join([p async for p in client.stream(messages)])
    assert len(text.strip()) > 0
    assert "paris" in text.lower()


@pytest.mark.asyncio(loop_scope="module")
async def test_closing_the_stream_stops_generation(client):
    client.options.max_tokens = 400
    before = _log(client).count(DISCONNECT_MARK)
    stream = client.stream([Message("user", "Tell me a very long story about a dragon and a knight.")])
    pieces = [await stream.__anext__() for _ in range(3)]
    assert all(isinstance(p, str) for p in pieces)
    await stream.aclose()

    async def disconnected():
        while _log(client).count(DISCONNECT_MARK) <= before:
            await asyncio.sleep(0.1)

    await asyncio.wait_for(disconnected(), WAIT_S)  # the server noticed and stopped this request
    client.options.max_tokens = 8
    # The server is free again: a new request is answered (it would queue behind a runaway one).
    assert "".join([p async for p in client.stream([Message("user", "Say hi.")])]).strip()


@pytest.mark.asyncio(loop_scope="module")
async def test_task_cancel_stops_generation(client):
    client.options.max_tokens = 400
    before = _log(client).count(DISCONNECT_MARK)
    await cancel_after_first(client.stream([Message("user", "Count from one to two hundred in words.")]), WAIT_S)

    async def disconnected():
        while _log(client).count(DISCONNECT_MARK) <= before:
            await asyncio.sleep(0.1)

    await asyncio.wait_for(disconnected(), WAIT_S)


async def test_close_stops_the_server(tmp_path: Path):
    llm = build_stage("llm", "openai", {"base_url": None, "model_path": str(_gguf()),
                                        "log_path": str(tmp_path / "s.log")}, BuildEnv(tmp_path))
    await llm.start()
    server = llm.server
    host, port = server.host, server.port
    proc = server._proc
    assert _accepts(host, port)
    await llm.close()
    assert proc.returncode is not None and not server.running
    assert not _accepts(host, port)


async def test_a_bad_model_file_fails_with_the_log(tmp_path: Path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file at all")
    server = LlamaServer(bad, "broken", log_path=tmp_path / "bad.log", startup_timeout_s=WAIT_S)
    with pytest.raises(LlamaServerError, match="exited"):
        await server.start()
    assert not server.running


async def test_server_dies_with_a_killed_parent(tmp_path: Path):
    # A parent killed with SIGKILL runs no atexit hook: the kernel must take the server down.
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from llm.llama_server import LlamaServer\n"
        "async def main():\n"
        f"    s = LlamaServer(Path({str(_gguf())!r}), 'm', log_path=Path({str(tmp_path / 'p.log')!r}))\n"
        "    await s.start()\n"
        "    print(s._proc.pid, flush=True)\n"
        "    await asyncio.sleep(600)\n"
        "asyncio.run(main())\n")
    parent = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE,
                                                  cwd=str(Path(__file__).resolve().parents[1]))
    line = await asyncio.wait_for(parent.stdout.readline(), WAIT_S)
    child = int(line)
    parent.kill()
    await parent.wait()

    async def gone():
        while True:
            try:
                state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except FileNotFoundError:
                return
            if state == "Z":  # dead, waiting for an init that may never reap it
                return
            await asyncio.sleep(0.1)

    try:
        await asyncio.wait_for(gone(), WAIT_S)
    finally:  # never leave a server behind, even when the assertion fails
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _last_prompt_eval(log: str) -> tuple[int, int]:
    """(tokens reused from a cached prefix, tokens evaluated) of the server's last request."""
    import re

    hits = re.findall(r"Llama.generate: (\d+) prefix-match hit, remaining (\d+) prompt tokens", log)
    assert hits, "the server logged no prefix match"
    return int(hits[-1][0]), int(hits[-1][1])


@pytest.mark.asyncio(loop_scope="module")
async def test_warm_keeps_each_sessions_prefix_cached(client):
    """Two sessions take turns on one server: each warm-up leaves its history in the prompt cache,
    so the turn's prompt evaluates only the new user message even after the other session ran."""
    client.options.max_tokens = 4

    def history(who: str) -> list[Message]:
        return [Message("system", f"You are {who}, a patient voice assistant who answers in one short "
                                  "spoken sentence, never with lists or markdown, always kindly."),
                Message("user", f"Hello {who}, can you hear me well today?"),
                Message("assistant", f"Yes, I can hear you clearly. I am {who}. How can I help you?")]

    alice, bob = history("Alice"), history("Bob")
    await client.warm(alice)
    await client.warm(bob)  # the server's live state is now Bob's
    question = Message("user", "What is the capital of Italy?")
    _ = "".join([p async for p in client.stream(alice + [question])])
    reused, evaluated = _last_prompt_eval(_log(client))
    assert reused > 60, (reused, evaluated)  # Alice's whole history came from the cache
    assert evaluated < 25, (reused, evaluated)  # only the question and the assistant header


def test_the_prompt_cache_stays_within_its_size_and_restores_exactly():
    """llm/llama_cache_fix.py, in-process: cached states keep one row of logits and the cache
    counts all they hold, so it never holds more than its capacity; a restored state continues
    exactly as an uncached run (greedy)."""
    from llama_cpp import Llama, LlamaRAMCache

    from llm import llama_cache_fix

    llama_cache_fix.apply()
    cached = Llama(model_path=str(_gguf()), n_ctx=1024, n_threads=1, verbose=False)
    capacity = 8 << 20
    cached.set_cache(LlamaRAMCache(capacity_bytes=capacity))
    restores = []
    load_state = cached.load_state
    cached.load_state = lambda state: (restores.append(state.n_tokens), load_state(state))[1]
    plain = Llama(model_path=str(_gguf()), n_ctx=1024, n_threads=1, verbose=False)
    base = "You are a helpful assistant. Please answer in one short sentence. " * 4
    questions = [f"Question {i}: what is {i} plus {i}? Answer:" for i in range(8)]
    for q in questions + questions[:2]:  # the last two are served from the cache
        got = cached.create_completion(base + q, max_tokens=8, temperature=0.0)["choices"][0]["text"]
        want = plain.create_completion(base + q, max_tokens=8, temperature=0.0)["choices"][0]["text"]
        assert got == want, (q, got, want)
    assert restores  # the cached path really ran (a state was loaded, then generation went on)
    states = list(cached.cache.cache_state.values())
    assert states and all(s.scores.shape[0] == 1 for s in states)
    held = sum(s.llama_state_size + s.scores.nbytes + s.input_ids.nbytes for s in states)
    assert cached.cache.cache_size == held <= capacity
    # Unpatched, each state would hold a logits row per token (~196 KB each) on top:
    assert sum(len(s.input_ids) for s in states) * plain.n_vocab() * 4 > capacity
