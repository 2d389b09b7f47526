"""Tools of an MCP server (the `mcp` SDK, 2.x), reached over stdio (the server runs as a child
process, started with the app) or streamable HTTP (a running server at `url`); its tool list is
read once at start.

The SDK's client contexts (anyio task groups) must be entered and left by one task, so one
long-lived task holds the connection and the sessions' calls go through it concurrently.
"""
from __future__ import annotations

import asyncio
import json
import logging

from core.config import ConfigError
from tools.config import McpToolsConfig

log = logging.getLogger(__name__)


class McpToolError(RuntimeError):
    """The MCP server reported the call as failed (isError), with its message."""


class McpServer:
    def __init__(self, config: McpToolsConfig) -> None:
        self.config = config
        self.session = None  # mcp.ClientSession once connected
        self._ready: asyncio.Future | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def start(self) -> list["McpTool"]:
        self._ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._serve(), name=f"mcp-{self.config.label}")
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), self.config.startup_timeout_s)
        except Exception as exc:
            await self.close()
            raise ConfigError(f"tools: MCP server {self.config.label} did not start: "
                              f"{type(exc).__name__}: {exc}") from None
        listed = await self.session.list_tools()
        allowed = self.config.allowed_tools
        return [McpTool(self, t.name, t.description or "", t.input_schema or {"type": "object"})
                for t in listed.tools if allowed is None or t.name in allowed]

    def _transport(self):
        if self.config.url is not None:
            from mcp.client.streamable_http import streamable_http_client

            return streamable_http_client(self.config.url)
        from mcp import StdioServerParameters
        from mcp.client.stdio import stdio_client

        return stdio_client(StdioServerParameters(command=self.config.command, args=self.config.args,
                                                  env=self.config.env))

    async def _serve(self) -> None:
        from mcp import ClientSession

        try:
            async with self._transport() as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                self.session = session
                self._ready.set_result(None)
                await self._stop.wait()
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
            elif not isinstance(exc, asyncio.CancelledError):
                log.warning("MCP server %s ended: %r", self.config.label, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self.session = None

    async def call(self, name: str, arguments: dict) -> str:
        if self.session is None:
            raise McpToolError(f"the MCP server for {name} is not running")
        result = await self.session.call_tool(name, arguments)
        texts = [c.text for c in result.content if getattr(c, "type", "") == "text"]
        if result.is_error:
            raise McpToolError(" ".join(texts) or "the tool failed")
        if result.structured_content is not None and not texts:
            return json.dumps(result.structured_content)
        return "\n".join(texts)

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5)
            except (asyncio.TimeoutError, asyncio.CancelledError, Exception):
                self._task.cancel()


class McpTool:
    def __init__(self, server: McpServer, name: str, description: str, parameters: dict) -> None:
        self.server, self.name, self.description, self.parameters = server, name, description, parameters
        self.timeout_s = server.config.timeout_s

    def spec(self) -> dict:
        return {"type": "function", "name": self.name, "description": self.description,
                "parameters": self.parameters}

    async def run(self, arguments: dict) -> str:
        return await self.server.call(self.name, arguments)
