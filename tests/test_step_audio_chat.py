"""llm.step_audio: Step-Audio-Chat's prompt format and its streamed, cancellable /v1/completions client."""
from __future__ import annotations

import asyncio
import socket

import pytest

from llm.base import Message, ReplyCut
from llm.openai_chat import LLMUnavailableError
from llm.step_audio import Options, StepAudioChatClient, render_prompt
from core.config import ConfigError
from core.stages import BuildEnv, build_stage
from tests.fixtures.completions_server import CompletionsServer

WAIT_S = 30  # generous bound for a slow shared machine; never a speed assertion

TWO_TURNS = [
    Message("system", "适配用户的语言，用简短口语化的文字回答"),
    Message("user", "你好，我叫小明。"),
    Message("assistant", "你好小明！有什么可以帮你的吗？"),
    Message("user", "<audio_12><audio_7><audio_1090><audio_5119><audio_1024>"),
]
# Pinned by hand from Step-Audio's stepaudio.py apply_chat_template: user → "human", every turn
# "<|BOT|>{role}\n{content}<|EOT|>", and the prompt ends with an open assistant turn.
GOLDEN = (
    "<|BOT|>system\n适配用户的语言，用简短口语化的文字回答<|EOT|>"
    "<|BOT|>human\n你好，我叫小明。<|EOT|>"
    "<|BOT|>assistant\n你好小明！有什么可以帮你的吗？<|EOT|>"
    "<|BOT|>human\n<audio_12><audio_7><audio_1090><audio_5119><audio_1024><|EOT|>"
    "<|BOT|>assistant\n"
)


def test_golden_prompt_two_turns():
    assert render_prompt(TWO_TURNS) == GOLDEN


def test_prompt_already_open_for_the_assistant_is_not_doubled():
    prompt = render_prompt([Message("user", "hi"), Message("assistant", "")])
    assert prompt == "<|BOT|>human\nhi<|EOT|><|BOT|>assistant\n<|EOT|><|BOT|>assistant\n"
    assert render_prompt([Message("user", "hi")]).endswith("<|EOT|><|BOT|>assistant\n")


@pytest.fixture
async def server():
    srv = await CompletionsServer(lambda prompt: "好的 我 在 这里 。").start()
    yield srv
    await srv.close()


async def test_streams_raw_prompt_through_completions(server):
    client = StepAudioChatClient(Options(base_url=server.base_url))
    try:
        text = "".join([p async for p in client.stream(TWO_TURNS) if isinstance(p, str)])
    finally:
        await client.close()
    assert text == "好的 我 在 这里 。"
    (req,) = server.requests
    assert req.prompt == GOLDEN
    assert req.body["stop"] == ["<|EOT|>"]
    assert req.body["model"] == "step-audio-chat"
    assert req.body["stream"] is True
    assert req.finished


async def test_closing_the_iterator_closes_the_http_stream():
    srv = await CompletionsServer(lambda p: " ".join(f"w{i}" for i in range(200)), delay_s=0.02).start()
    client = StepAudioChatClient(Options(base_url=srv.base_url))
    try:
        stream = client.stream(TWO_TURNS)
        first = [await stream.__anext__() for _ in range(3)]
        assert first == ["w0", " w1", " w2"]
        await stream.aclose()
        (req,) = srv.requests
        await asyncio.wait_for(req.disconnected.wait(), WAIT_S)  # the server saw the client go
        assert not req.finished and req.pieces_sent < 200
    finally:
        await client.close()
        await srv.close()


async def test_cancelling_the_consumer_closes_the_http_stream():
    srv = await CompletionsServer(lambda p: " ".join(f"w{i}" for i in range(200)), delay_s=0.02).start()
    client = StepAudioChatClient(Options(base_url=srv.base_url))
    got: list[str] = []

    async def consume():
        async for piece in client.stream(TWO_TURNS):
            got.append(piece)

    try:
        task = asyncio.create_task(consume())
        while len(got) < 2:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (req,) = srv.requests
        await asyncio.wait_for(req.disconnected.wait(), WAIT_S)
        assert not req.finished
    finally:
        await client.close()
        await srv.close()


async def test_unreachable_server_is_a_clear_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = StepAudioChatClient(Options(base_url=f"http://127.0.0.1:{port}/v1", timeout=5))
    try:
        with pytest.raises(LLMUnavailableError, match=f"127.0.0.1:{port}"):
            [p async for p in client.stream(TWO_TURNS)]
    finally:
        await client.close()


async def test_asr_request_uses_the_asr_prompt(server):
    client = StepAudioChatClient(Options(base_url=server.base_url))
    try:
        text = await client.complete_text("请记录下你所听到的语音内容。", (3, 1027))
    finally:
        await client.close()
    assert text == "好的 我 在 这里 。"
    assert server.requests[0].prompt == ("<|BOT|>system\n请记录下你所听到的语音内容。<|EOT|>"
                                         "<|BOT|>human\n<audio_3><audio_1027><|EOT|><|BOT|>assistant\n")


def test_build_validates_options(tmp_path):
    client = build_stage("llm", "step-audio", {"base_url": "http://127.0.0.1:1/v1"}, BuildEnv(tmp_path))
    assert isinstance(client, StepAudioChatClient) and client.options.model == "step-audio-chat"
    with pytest.raises(ConfigError, match="llm: tempreature"):
        build_stage("llm", "step-audio", {"tempreature": 0.5}, BuildEnv(tmp_path))


@pytest.mark.integration
async def test_against_the_bundled_llama_cpp_server(tmp_path):
    """The same client against a real OpenAI-compatible server (llama.cpp, SmolLM2-135M)."""
    from core import assets
    from llm.llama_server import LlamaServer
    from tests.test_llama_server import DISCONNECT_MARK, require_llama_server

    require_llama_server()
    try:
        gguf = assets.package_file(assets.ASSETS["smollm2-135m"].files[0].parts[0])
    except assets.AssetError as exc:
        pytest.skip(str(exc))
    server = LlamaServer(gguf, "step-audio-chat", n_parallel=1, log_path=tmp_path / "llama.log")
    await server.start()
    client = StepAudioChatClient(Options(base_url=server.base_url, max_tokens=400, temperature=0.0))
    try:
        prompt_msgs = [Message("system", "You are a storyteller."), Message("user", "Tell me a long story.")]
        stream = client.stream(prompt_msgs)
        pieces = [await stream.__anext__() for _ in range(3)]
        assert all(isinstance(p, str) for p in pieces)
        await stream.aclose()

        async def disconnected():
            while DISCONNECT_MARK not in server.log_tail(200):
                await asyncio.sleep(0.1)

        await asyncio.wait_for(disconnected(), 120)  # llama.cpp stopped generating for us
        client.options.max_tokens = 8
        assert "".join([p async for p in client.stream([Message("user", "Say hi.")]) if isinstance(p, str)]).strip()
        # A reply's own lower limit: the server stops there and the stream says it was cut.
        pieces = [p async for p in client.stream(prompt_msgs, max_tokens=3)]
        assert isinstance(pieces[-1], ReplyCut) and 1 <= len(pieces) - 1 <= 3
    finally:
        await client.close()
        await server.stop()
