"""Server-side tools: functions the server runs itself when the model calls them, for clients
that do not handle function calls (a phone caller, the web page). Declared in the config's
`tools:` section (tools/config.py): Python functions and MCP servers' tools. docs/tools.md.

`ToolSet` is what the controller sees (controller.ports.ToolRunner).
"""
from __future__ import annotations

from collections.abc import Sequence

from core.config import ConfigError
from tools.config import McpToolsConfig, PythonToolConfig, ToolConfig


class ToolSet:
    def __init__(self) -> None:
        self._tools: dict[str, object] = {}  # name -> PythonTool | McpTool
        self.mcp_servers: list = []  # tools.mcp_tools.McpServer, started by start()

    def add(self, tool) -> None:
        if tool.name in self._tools:
            raise ConfigError(f"tools: two tools are named {tool.name!r}")
        self._tools[tool.name] = tool

    def specs(self) -> list[dict]:
        return [tool.spec() for tool in self._tools.values()]

    def has(self, name: str) -> bool:
        return name in self._tools

    def timeout_s(self, name: str) -> float:
        return self._tools[name].timeout_s

    async def run(self, name: str, arguments: dict) -> str:
        return await self._tools[name].run(arguments)

    async def start(self) -> None:
        """Connect to the MCP servers and learn their tools (Python tools need nothing)."""
        for server in self.mcp_servers:
            for tool in await server.start():
                self.add(tool)

    async def close(self) -> None:
        for server in self.mcp_servers:
            await server.close()


def build_tool_runner(configs: Sequence[ToolConfig]) -> ToolSet:
    tools = ToolSet()
    for config in configs:
        if isinstance(config, PythonToolConfig):
            from tools.python_tool import PythonTool

            tools.add(PythonTool(config))
        elif isinstance(config, McpToolsConfig):
            from tools.mcp_tools import McpServer

            tools.mcp_servers.append(McpServer(config))
    return tools
