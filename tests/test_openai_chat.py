"""OpenAIChatClient against a small OpenAI-compatible SSE server on loopback (aiohttp), which
records what it was asked and whether the client hung up before the end of the stream."""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from llm.base import Message, ReplyCut
from llm.llama_server import free_port
from llm.openai_chat import LLMError, LLMUnavailableError, OpenAIChatClient, Options
from core.stages import BuildEnv, build_stage
from tests.aio_util import cancel_after_first

WAIT_S = 30  # bound on waits that end at once when the code works


@dataclass
class SSEServer:
    words: list[str]
    delay_s: float = 0.02
    status: int = 200
    finish: str = "stop"  # the last chunk's finish_reason ("length": cut at max_tokens)
    bodies: list[dict] = field(default_factory=list)
    sessions: list[str | None] = field(default_factory=list)  # the X-Session-Id header of each request
    sent: int = 0
    finished: bool = False
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    base_url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.json())
        self.sessions.append(request.headers.get("X-Session-Id"))
        if self.status != 200:
            return web.json_response({"error": {"message": "model exploded", "type": "server_error"}},
                                     status=self.status)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            await resp.write(_event({"role": "assistant", "content": ""}))  # role-only delta first
            for word in self.words:
                await asyncio.sleep(self.delay_s)
                if request.transport is None or request.transport.is_closing():
                    raise ConnectionResetError
                await resp.write(_event({"content": word}))
                self.sent += 1
            await resp.write(_event({}, finish=self.finish))
            await resp.write(b"data: [DONE]\n\n")
            self.finished = True
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        return resp


def _event(delta: dict, finish: str | None = None) -> bytes:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m",
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(chunk)}\n\n".encode()


@pytest.fixture
async def sse():
    server = SSEServer(words=[f" w{i}" for i in range(500)])
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    server.base_url = f"http://127.0.0.1:{port}/v1"
    yield server
    await runner.cleanup()


MESSAGES = [Message("system", "Be brief."), Message("user", "Hi!")]


async def test_streams_content_deltas_and_sends_options(sse: SSEServer):
    sse.words = ["Hello", " there", "!"]
    client = OpenAIChatClient(Options(base_url=sse.base_url, model="tiny", max_tokens=7, temperature=0.1))
    pieces = [p async for p in client.stream(MESSAGES)]
    await client.close()
    assert pieces == ["Hello", " there", "!"]
    body = sse.bodies[0]
    assert body["stream"] is True and body["model"] == "tiny" and body["max_tokens"] == 7
    assert body["temperature"] == 0.1
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]


@pytest.mark.parametrize("text_tool_calls", [True, False])
async def test_a_stream_cut_at_max_tokens_ends_with_a_reply_cut(sse: SSEServer, text_tool_calls: bool):
    sse.words, sse.finish = ["Pack", " light", ". Bring", " a"], "length"
    client = OpenAIChatClient(Options(base_url=sse.base_url, model="tiny", text_tool_calls=text_tool_calls))
    pieces = [p async for p in client.stream(MESSAGES)]
    assert pieces[:-1] == ["Pack", " light", ". Bring", " a"] and isinstance(pieces[-1], ReplyCut)
    sse.finish = "stop"
    assert not any(isinstance(p, ReplyCut) for p in [p async for p in client.stream(MESSAGES)])
    await client.close()


async def test_a_replys_own_limit_lowers_max_tokens_and_never_raises_it(sse: SSEServer):
    sse.words = ["Hi."]
    client = OpenAIChatClient(Options(base_url=sse.base_url, model="tiny", max_tokens=7))
    for asked in (3, 50, None):
        assert [p async for p in client.stream(MESSAGES, max_tokens=asked)] == ["Hi."]
    await client.close()
    assert [b["max_tokens"] for b in sse.bodies] == [3, 7, 7]


async def test_affinity_header_carries_the_session_to_a_hashing_balancer(sse: SSEServer):
    from core.scheduler import Ticket, working_for

    sse.words = ["Hi"]
    client = OpenAIChatClient(Options(base_url=sse.base_url, affinity_header="X-Session-Id"))
    for session in ("sess_a", "sess_b"):
        with working_for(Ticket(session)):
            assert [p async for p in client.stream(MESSAGES)] == ["Hi"]
    plain = OpenAIChatClient(Options(base_url=sse.base_url))
    assert [p async for p in plain.stream(MESSAGES)] == ["Hi"]
    await client.close()
    await plain.close()
    assert sse.sessions == ["sess_a", "sess_b", None]


async def test_aclose_closes_the_http_stream(sse: SSEServer):
    client = OpenAIChatClient(Options(base_url=sse.base_url))
    stream = client.stream(MESSAGES)
    got = [await stream.__anext__() for _ in range(3)]
    assert got == [" w0", " w1", " w2"]
    await stream.aclose()
    await asyncio.wait_for(sse.disconnected.wait(), WAIT_S)  # the server saw the hang-up
    assert not sse.finished and sse.sent < len(sse.words)
    await client.close()


async def test_task_cancel_closes_the_http_stream(sse: SSEServer):
    client = OpenAIChatClient(Options(base_url=sse.base_url))
    await cancel_after_first(client.stream(MESSAGES), WAIT_S)
    await asyncio.wait_for(sse.disconnected.wait(), WAIT_S)
    assert not sse.finished
    await client.close()


async def test_unreachable_server_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    client = OpenAIChatClient(Options(base_url=url, timeout=5))
    with pytest.raises(LLMUnavailableError, match="127.0.0.1") as info:
        async for _ in client.stream(MESSAGES):
            pass
    assert isinstance(info.value, ConnectionError)
    await client.close()


async def test_server_error_status_is_an_llm_error(sse: SSEServer):
    sse.status = 500
    client = OpenAIChatClient(Options(base_url=sse.base_url))
    with pytest.raises(LLMError, match="500"):
        async for _ in client.stream(MESSAGES):
            pass
    await client.close()


async def test_with_base_url_no_local_server_is_started(sse: SSEServer, tmp_path: Path):
    client = build_stage("llm", "openai", {"base_url": sse.base_url}, BuildEnv(tmp_path))
    assert client.server is None
    await client.start()
    sse.words = ["ok"]
    assert [p async for p in client.stream(MESSAGES)] == ["ok"]
    await client.close()
    assert not (tmp_path / "logs").exists()


def test_without_base_url_a_bundled_server_is_configured(tmp_path: Path):
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")  # never loaded: build() only configures the server
    client = build_stage("llm", "openai", {"base_url": None, "model": "tiny", "model_path": str(gguf),
                                           "n_threads": 2}, BuildEnv(tmp_path))
    assert client.server is not None and not client.server.running
    cmd = client.server.command()
    assert cmd[cmd.index("--model") + 1] == str(gguf) and cmd[cmd.index("--alias") + 1] == "tiny"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--threads") + 1] == "2" and cmd[cmd.index("--parallel") + 1] == "8"
    assert cmd[cmd.index("--ctx-size") + 1] == str(8 * 2048)  # n_ctx is per slot
    assert client.server.log_path == tmp_path / "logs" / "llama-server.log"


async def test_a_call_written_as_text_with_no_tools_offered_is_not_spoken(sse: SSEServer):
    """After a tool round the model is offered no tools; Qwen 0.5B may still write a JSON call,
    which must not be read aloud (nor become a call). Plain text is untouched."""
    sse.words = ['{"name": "weather_info", ', '"arguments": {"city": "Oslo"}}']
    client = OpenAIChatClient(Options(base_url=sse.base_url, model="tiny"))
    try:
        assert [p async for p in client.stream(MESSAGES)] == []
        sse.words = ["{Braces}", " are fine."]
        assert "".join([p async for p in client.stream(MESSAGES)]) == "{Braces} are fine."
    finally:
        await client.close()


async def test_after_a_tool_result_with_no_tools_offered_a_reminder_follows_it(sse: SSEServer):
    from llm.base import ToolCall

    sse.words = ["It is sunny."]
    history = [*MESSAGES, Message("assistant", "", tool_calls=(ToolCall("c1", "get_weather", '{"city": "Oslo"}'),)),
               Message("tool", '{"sky": "sunny"}', tool_call_id="c1")]
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    client = OpenAIChatClient(Options(base_url=sse.base_url, model="tiny", after_tool_instruction="Say it."))
    plain = OpenAIChatClient(Options(base_url=sse.base_url, model="tiny"))
    try:
        for c, kwargs in ((client, {}), (client, {"tools": tools}), (plain, {})):
            assert "".join([p async for p in c.stream(history, **kwargs)]) == "It is sunny."
        [p async for p in client.stream(MESSAGES)]
    finally:
        await client.close()
        await plain.close()
    answer, offered, without, no_tool_result = (b["messages"] for b in sse.bodies)
    assert answer[-1] == {"role": "system", "content": "Say it."} and answer[-2]["role"] == "tool"
    assert offered[-1]["role"] == "tool" and without[-1]["role"] == "tool"
    assert no_tool_result[-1] == {"role": "user", "content": "Hi!"}
