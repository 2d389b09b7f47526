"""Qwen2.5-Coder-0.5B (configs/qwen.yaml's LLM) on the bundled llama-server calls tools for real:

- the official openai SDK's realtime client runs a function-calling conversation (typed turns);
- spoken turns on the whole embedded stack (VAD, Whisper, piper) use a server-side Python tool and
  an MCP tool (a small local MCP server), and speak their results.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import soxr
from openai import AsyncOpenAI

from realtime.config import load_config
from tests.realtime_util import REPO, fake_config, running_server, silence, ws_client
from tests.speech_util import piper
from tests.test_openai_sdk import receive_until

pytestmark = pytest.mark.integration

WEATHER = {"type": "function", "name": "get_weather", "description": "Get today's weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TIMEOUT = 300  # a slow shared machine; never reached when it works


async def test_the_sdk_runs_a_function_calling_conversation_with_qwen() -> None:
    config = fake_config(**{"llm": {"impl": "openai", "model": "qwen2.5-coder-0.5b", "n_parallel": 1,
                                    "n_ctx": 2048, "max_tokens": 60, "temperature": 0}})
    async with running_server(config) as server:
        client = AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk-test")
        async with client.realtime.connect(model="step-realtime") as conn:
            seen: list = []
            await receive_until(conn, "session.created", seen)
            await conn.session.update(session={
                "type": "realtime", "tools": [WEATHER], "tool_choice": "auto",
                "instructions": "You are a voice assistant. Use the tools when they help. When a tool has "
                                "answered, tell the user its result in one short sentence.",
                "audio": {"input": {"turn_detection": None}}})
            await receive_until(conn, "session.updated", seen)
            await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "What is the weather in Paris today?"}]})
            await conn.response.create()
            done = await receive_until(conn, "response.done", seen, TIMEOUT)
            call = done.response.output[0]  # the model only called: no empty message before it
            assert call.type == "function_call" and call.name == "get_weather", done.response.output
            assert json.loads(call.arguments)["city"].lower() == "paris"
            await conn.conversation.item.create(item={
                "type": "function_call_output", "call_id": call.call_id,
                "output": json.dumps({"city": "Paris", "sky": "sunny", "temperature_c": 21})})
            # Left to itself the 0.5B model calls the tool again: this answer is to be spoken.
            await conn.response.create(response={"tool_choice": "none"})
            final = await receive_until(conn, "response.done", seen, TIMEOUT)
            said = final.response.output[0].content[0].transcript
            assert "21" in said or "sunny" in said.lower(), final.response.output


def spoken(text: str) -> np.ndarray:
    return np.concatenate([silence(0.5), soxr.resample(piper(text), 16_000, 24_000).astype(np.int16), silence(1.5)])


async def test_a_server_tool_and_an_mcp_tool_in_spoken_turns() -> None:
    mcp = {"type": "mcp", "command": sys.executable, "allowed_tools": ["get_forecast"],
           "args": [str(REPO / "tests" / "fixtures" / "mcp_weather_server.py")]}
    config = load_config(REPO / "configs" / "qwen.yaml", {
        "server.port": 0, "server.auth.enabled": False, "llm.temperature": 0, "controller.speculation": False,
        "tools": [{"type": "python", "function": "tests.tool_fixtures:get_weather", "timeout_s": 5}, mcp]})
    async with running_server(config) as server:
        statuses = []
        for question, tool, words in (
                ("What is the weather in Paris today?", "get_weather", ("21", "twenty")),
                ("What is the forecast for Oslo tomorrow?", "get_forecast", ("24", "sunny"))):
            async with ws_client(server) as c:  # a call each: one session each (no earlier call to copy)
                await c.send_audio(spoken(question))
                first = await c.next("response.done", timeout=TIMEOUT)
                calls = [o for o in first["response"]["output"] if o["type"] == "function_call"]
                assert [o["name"] for o in calls] == [tool], first["response"]["output"]
                result = await _tool_output(c, calls[0]["call_id"])
                answer = await c.next("response.done", timeout=TIMEOUT)
                said = answer["response"]["output"][0]["content"][0]["transcript"]
                assert said, answer["response"]
                assert any(w in said.lower() for w in words), (said, result)
                statuses += [(s["name"], s["status"]) for s in c.of_type("step.tool_call")]
        assert statuses == [("get_weather", "running"), ("get_weather", "completed"),
                            ("get_forecast", "running"), ("get_forecast", "completed")]


async def _tool_output(c, call_id: str) -> str:
    while True:
        added = await c.next("conversation.item.added", timeout=TIMEOUT)
        if added["item"]["type"] == "function_call_output" and added["item"]["call_id"] == call_id:
            return added["item"]["output"]
