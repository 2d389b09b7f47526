"""Qwen2.5-Coder-0.5B (configs/qwen.yaml's LLM) on the bundled llama-server calls a tool, then
speaks its result: the real model, through a Realtime session with typed turns (no audio models)."""
from __future__ import annotations

import json

import pytest

from tests.realtime_util import fake_config, running_server, ws_client

WEATHER = {"type": "function", "name": "get_weather", "description": "Get today's weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.mark.integration
async def test_qwen_calls_a_tool_and_speaks_its_result() -> None:
    config = fake_config(**{"llm": {"impl": "openai", "model": "qwen2.5-coder-0.5b", "n_parallel": 1,
                                    "n_ctx": 2048, "max_tokens": 60, "temperature": 0}})
    async with running_server(config) as server:
        async with ws_client(server) as c:
            await c.send({"type": "session.update", "session": {
                "instructions": "You are a voice assistant. Use the tools when they help. When a tool has "
                                "answered, tell the user its result in one short sentence.",
                "tools": [WEATHER], "audio": {"input": {"turn_detection": None}}}})
            await c.next("session.updated")
            await c.send({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "What is the weather in Paris today?"}]}})
            await c.send({"type": "response.create"})
            done = await c.next("response.done", timeout=120)
            call = next(o for o in done["response"]["output"] if o["type"] == "function_call")
            assert call["name"] == "get_weather"
            assert json.loads(call["arguments"])["city"].lower() == "paris"
            await c.send({"type": "conversation.item.create", "item": {
                "type": "function_call_output", "call_id": call["call_id"],
                "output": json.dumps({"city": "Paris", "sky": "sunny", "temperature_c": 21})}})
            # Left to itself the 0.5B model calls the tool again: this answer is to be spoken.
            await c.send({"type": "response.create", "response": {"tool_choice": "none"}})
            final = await c.next("response.done", timeout=120)
            said = final["response"]["output"][0]["content"][0]["transcript"]
            assert "21" in said or "sunny" in said.lower(), final["response"]["output"]
