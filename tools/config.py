"""The config's `tools:` section: server-side tools, validated like the rest of the config."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class PythonToolConfig(BaseModel):
    """A Python function the server calls. Its name, description (docstring) and parameters
    (signature, as JSON Schema) are read from the function unless given here."""
    model_config = ConfigDict(extra="forbid")
    type: Literal["python"]
    function: str = Field(pattern=r"^[\w.]+:[\w.]+$", description='"package.module:function"')
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict | None = Field(None, description="JSON Schema of the arguments object")
    timeout_s: float = Field(5.0, gt=0, description="then the model gets an error result")


class McpToolsConfig(BaseModel):
    """The tools of an MCP server, started as a child process speaking MCP over stdio."""
    model_config = ConfigDict(extra="forbid")
    type: Literal["mcp"]
    command: str = Field(description="the server's executable, e.g. python")
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] | None = None
    allowed_tools: list[str] | None = Field(None, description="offer only these of its tools; null: all")
    timeout_s: float = Field(10.0, gt=0, description="per call; then the model gets an error result")
    startup_timeout_s: float = Field(30.0, gt=0)


ToolConfig = Annotated[PythonToolConfig | McpToolsConfig, Field(discriminator="type")]
