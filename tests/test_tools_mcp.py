"""Server-side tools from an MCP server (stdio): listed at start, called in a spoken turn."""
from __future__ import annotations

import sys

from tests.realtime_util import REPO, fake_config, running_server, server_context, utterance, ws_client

MCP_SERVER = {"type": "mcp", "command": sys.executable, "args": [str(REPO / "tests" / "fixtures" / "mcp_weather_server.py")]}


async def test_an_mcp_tool_is_called_in_a_spoken_turn() -> None:
    config = fake_config(**{"tools": [MCP_SERVER],
                            "llm.tool_call": {"name": "get_forecast", "arguments": {"city": "Oslo"}}})
    async with running_server(config) as server:
        specs = {s["name"]: s for s in server_context(server).tool_runner.specs()}
        assert set(specs) == {"get_forecast", "failing_tool"}
        assert specs["get_forecast"]["parameters"]["properties"]["city"]["type"] == "string"
        async with ws_client(server) as c:
            await c.send_audio(utterance(1.0))
            first = await c.next("response.done")
            assert first["response"]["output"][0]["name"] == "get_forecast"
            second = await c.next("response.done")
            assert second["response"]["output"][0]["content"][0]["transcript"] == \
                "The tool said: Sunny in Oslo, 24 degrees.."
            assert [s["status"] for s in c.of_type("step.tool_call")] == ["running", "completed"]


async def test_an_mcp_tool_error_becomes_the_result() -> None:
    config = fake_config(**{"tools": [{**MCP_SERVER, "allowed_tools": ["failing_tool"]}],
                            "llm.tool_call": {"name": "failing_tool", "arguments": {}}})
    async with running_server(config) as server:
        assert [s["name"] for s in server_context(server).tool_runner.specs()] == ["failing_tool"]
        async with ws_client(server) as c:
            await c.send_audio(utterance(1.0))
            await c.next("response.done")
            second = await c.next("response.done")
            assert "failing_tool failed" in second["response"]["output"][0]["content"][0]["transcript"]
            assert c.of_type("step.tool_call")[-1]["status"] == "failed"


async def test_an_mcp_server_over_streamable_http() -> None:
    import asyncio
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(sys.executable, MCP_SERVER["args"][0], "http", str(port),
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        for _ in range(200):  # until it listens
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        config = fake_config(**{"tools": [{"type": "mcp", "url": f"http://127.0.0.1:{port}/mcp"}],
                                "llm.tool_call": {"name": "get_forecast", "arguments": {"city": "Lima"}}})
        async with running_server(config) as server:
            async with ws_client(server) as c:
                await c.send_audio(utterance(1.0))
                await c.next("response.done")
                second = await c.next("response.done")
                assert "Sunny in Lima" in second["response"]["output"][0]["content"][0]["transcript"]
    finally:
        proc.terminate()
        await proc.wait()


def test_an_mcp_entry_needs_one_transport() -> None:
    import pytest

    from core.config import ConfigError

    for entry in ({"type": "mcp"}, {"type": "mcp", "command": "x", "url": "http://h/mcp"}):
        with pytest.raises(ConfigError, match="command \\(stdio\\) or url"):
            fake_config(tools=[entry])
