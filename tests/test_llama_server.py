"""The bundled llama.cpp server (llm.llama_server: llama.cpp's llama-server) with SmolLM2-135M,
through OpenAIChatClient. Facts are read from the server itself: its log, GET /slots (each slot's
last prompt and how many of its tokens came from the cache) and GET /metrics (decode calls)."""
from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

import aiohttp
import openai
import pytest
import pytest_asyncio

from core.stages import BuildEnv, build_stage
from llm.base import Message, ReplyCut
from llm.llama_server import LlamaServer, LlamaServerError, binary_missing_reason
from tests.aio_util import cancel_after_first, child_dies_with_killed_parent

pytestmark = [pytest.mark.integration]
WAIT_S = 120
# What llama-server logs when a streamed request's client has gone: the HTTP thread sees the
# closed connection and cancels the task, and the slot stops at its next token.
DISCONNECT_MARK = "cancel task, id_task = "


def require_llama_server() -> None:
    """Skip a test that needs the llama-server binary when it is not built (under CI=true,
    tests/conftest.py turns the skip into a failure: `make setup` must have built it)."""
    reason = binary_missing_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(autouse=True)
def _needs_binary():
    require_llama_server()


def _gguf() -> Path:
    from core import assets

    try:  # the installed package's file directly: no copy into a cache for tests
        return assets.package_file(assets.ASSETS["smollm2-135m"].files[0].parts[0])
    except assets.AssetError as exc:
        pytest.skip(str(exc))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(tmp_path_factory):
    require_llama_server()
    tmp = tmp_path_factory.mktemp("llama")
    llm = build_stage("llm", "openai", {"base_url": None, "model_path": str(_gguf()), "max_tokens": 48,
                                        "temperature": 0.0, "log_path": str(tmp / "server.log")}, BuildEnv(tmp))
    await llm.start()
    yield llm
    await llm.close()


def _log(client) -> str:
    return client.server.log_path.read_text(errors="replace")


async def _get(server: LlamaServer, path: str):
    async with aiohttp.ClientSession() as http, http.get(server.root_url + path) as r:
        r.raise_for_status()
        return await (r.json() if path == "/slots" else r.text())


async def _metric(server: LlamaServer, name: str) -> float:
    text = await _get(server, "/metrics")
    m = re.search(rf"^llamacpp:{name} ([0-9.e+-]+)$", text, re.M)
    assert m, f"no llamacpp:{name} in /metrics"
    return float(m.group(1))


async def _wait_idle(server: LlamaServer) -> None:
    while any(s["is_processing"] for s in await _get(server, "/slots")):
        await asyncio.sleep(0.1)


def _accepts(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


@pytest.mark.asyncio(loop_scope="module")
async def test_server_answers_a_chat(client):
    assert client.server.running and client.base_url.startswith("http://127.0.0.1:")
    messages = [Message("system", "You are a helpful voice assistant. Answer in one short sentence."),
                Message("user", "What is the capital of France?")]
    text = "".join([p async for p in client.stream(messages) if isinstance(p, str)])
    assert len(text.strip()) > 0
    assert "paris" in text.lower()
    slots = await _get(client.server, "/slots")
    assert len(slots) == 8 and all(s["n_ctx"] == 2048 for s in slots)  # the defaults: 8 slots of 2048


async def _stopped_early(client, before: int) -> None:
    """The server logged the cancellation of one more task, and no slot goes on generating."""
    async def disconnected():
        while _log(client).count(DISCONNECT_MARK) <= before:
            await asyncio.sleep(0.1)

    await asyncio.wait_for(disconnected(), WAIT_S)
    await asyncio.wait_for(_wait_idle(client.server), WAIT_S)
    slot = max(await _get(client.server, "/slots"), key=lambda s: s.get("id_task", -1))  # the last task's
    assert slot["next_token"][0]["n_decoded"] < 200, slot["next_token"]  # far from its 400 tokens


@pytest.mark.asyncio(loop_scope="module")
async def test_closing_the_stream_stops_generation(client):
    client.options.max_tokens = 400
    before = _log(client).count(DISCONNECT_MARK)
    stream = client.stream([Message("user", "Tell me a very long story about a dragon and a knight.")])
    pieces = [await stream.__anext__() for _ in range(3)]
    assert all(isinstance(p, str) for p in pieces)
    await stream.aclose()
    await _stopped_early(client, before)
    client.options.max_tokens = 8
    assert "".join([p async for p in client.stream([Message("user", "Say hi.")]) if isinstance(p, str)]).strip()


@pytest.mark.asyncio(loop_scope="module")
async def test_a_reply_stopped_at_max_tokens_ends_with_a_reply_cut(client):
    client.options.max_tokens = 6
    pieces = [p async for p in client.stream([Message("user", "Tell me a very long story about a dragon.")])]
    assert isinstance(pieces[-1], ReplyCut) and all(isinstance(p, str) for p in pieces[:-1])
    client.options.max_tokens = 400
    pieces = [p async for p in client.stream([Message("user", "Say only: yes.")])]
    assert not any(isinstance(p, ReplyCut) for p in pieces)  # it ended by itself
    client.options.max_tokens = 48


@pytest.mark.asyncio(loop_scope="module")
async def test_task_cancel_stops_generation(client):
    client.options.max_tokens = 400
    before = _log(client).count(DISCONNECT_MARK)
    await cancel_after_first(client.stream([Message("user", "Count from one to two hundred in words.")]), WAIT_S)
    await _stopped_early(client, before)


@pytest.mark.asyncio(loop_scope="module")
async def test_concurrent_streams_decode_together(client):
    """Four streams at once are decoded in shared batches: far fewer llama_decode() calls than
    tokens generated (one call per token each if they queued), several slots busy per call.
    Structural, from the server's own counters, so a slow machine cannot flake it."""
    n, tokens = 4, 32
    await _wait_idle(client.server)
    decodes0 = await _metric(client.server, "n_decode_total")
    predicted0 = await _metric(client.server, "tokens_predicted_total")
    sdk = openai.AsyncOpenAI(base_url=client.base_url, api_key="x")

    async def one(k: int) -> int:
        stream = await sdk.chat.completions.create(
            model="smollm2-135m", stream=True, max_tokens=tokens, temperature=0.0,
            messages=[{"role": "user", "content": f"Story number {k}: tell me a long story about a cat."}],
            extra_body={"ignore_eos": True})  # exactly `tokens` each
        return sum([1 async for c in stream if c.choices and c.choices[0].delta.content])

    try:
        counts = await asyncio.wait_for(asyncio.gather(*(one(k) for k in range(n))), WAIT_S)
    finally:
        await sdk.close()
    assert all(c >= tokens // 2 for c in counts), counts
    await _wait_idle(client.server)
    decodes = await _metric(client.server, "n_decode_total") - decodes0
    predicted = await _metric(client.server, "tokens_predicted_total") - predicted0
    assert predicted >= n * tokens * 0.9, predicted
    assert decodes < predicted / 2, (decodes, predicted)  # queued one by one: >= predicted
    busy = await _metric(client.server, "n_busy_slots_per_decode")
    assert busy > 1.0, busy  # the running average over every decode so far


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


async def test_a_missing_binary_says_how_to_build_it(tmp_path: Path):
    server = LlamaServer(_gguf(), "m", binary=tmp_path / "no-such-llama-server", log_path=tmp_path / "x.log")
    with pytest.raises(LlamaServerError, match="no llama-server"):
        await server.start()


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
    await child_dies_with_killed_parent(  # the binary itself, not a wrapper
        script, WAIT_S, is_child=lambda pid: Path(f"/proc/{pid}/exe").resolve().name.startswith("llama-server"))


def _history(who: str) -> list[Message]:
    return [Message("system", f"You are {who}, a patient voice assistant who answers in one short "
                              "spoken sentence, never with lists or markdown, always kindly."),
            Message("user", f"Hello {who}, can you hear me well today?"),
            Message("assistant", f"Yes, I can hear you clearly. I am {who}. How can I help you?")]


async def _prompt_tokens(server: LlamaServer, request) -> tuple[int, int, str]:
    """(prompt tokens reused from a cache, prompt tokens evaluated, result) of awaiting `request`,
    from the server's own counters (it must be the only request in flight)."""
    await _wait_idle(server)
    cached0, evaluated0 = await _metric(server, "prompt_tokens_cached_total"), await _metric(server, "prompt_tokens_total")
    result = await request
    await _wait_idle(server)
    cached = await _metric(server, "prompt_tokens_cached_total") - cached0
    evaluated = await _metric(server, "prompt_tokens_total") - evaluated0
    return int(cached), int(evaluated), result


async def _reply(llm, messages: list[Message]) -> str:
    return "".join([p async for p in llm.stream(messages) if isinstance(p, str)])


@pytest.mark.asyncio(loop_scope="module")
async def test_warm_keeps_each_sessions_prefix_cached(client):
    """Two sessions take turns on one server: each warm-up leaves its history in a slot, so the
    turn's prompt evaluates only the new user message even after the other session ran."""
    client.options.max_tokens = 4
    alice, bob = _history("Alice"), _history("Bob")
    await client.warm(alice)
    await client.warm(bob)  # another session's request in between
    question = Message("user", "What is the capital of Italy?")
    reused, evaluated, _ = await _prompt_tokens(client.server, _reply(client, alice + [question]))
    assert reused > 60, (reused, evaluated)  # Alice's whole history came from the cache
    assert evaluated < 25, (reused, evaluated)  # only the question and the assistant header


async def test_more_sessions_than_slots_restore_their_prefix_exactly(tmp_path: Path):
    """One slot, two sessions: each request pushes the other session's state out of the slot
    into the RAM prompt cache (--cache-ram), and the next one restores it. A restored state
    continues exactly as a fresh evaluation does (greedy)."""
    llm = build_stage("llm", "openai", {"base_url": None, "model_path": str(_gguf()), "n_parallel": 1,
                                        "max_tokens": 12, "temperature": 0.0, "warm_prefix": True,
                                        "log_path": str(tmp_path / "s.log")}, BuildEnv(tmp_path))
    await llm.start()
    try:
        alice, bob = _history("Alice"), _history("Bob")
        question = Message("user", "What is the capital of Italy?")
        reused, evaluated, fresh = await _prompt_tokens(llm.server, _reply(llm, alice + [question]))
        assert reused == 0 and evaluated > 60  # nothing cached for Alice yet
        for _ in range(2):
            await llm.warm(bob)  # Bob takes the only slot
            reused, evaluated, again = await _prompt_tokens(llm.server, _reply(llm, alice + [question]))
            assert reused > 60 and evaluated < 5, (reused, evaluated)  # restored from the RAM cache
            assert again == fresh
    finally:
        await llm.close()
