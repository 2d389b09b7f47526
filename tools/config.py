"""The config's `tools:` section: server-side tools, validated like the rest of the config."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
    """The tools of an MCP server: a child process speaking MCP over stdio (`command`), or a
    running server reached over streamable HTTP (`url`)."""
    model_config = ConfigDict(extra="forbid")
    type: Literal["mcp"]
    command: str | None = Field(None, description="stdio: the server's executable, e.g. python")
    args: list[str] = Field(default_factory=list)
    url: str | None = Field(None, pattern=r"^https?://", description="streamable HTTP: e.g. http://127.0.0.1:8000/mcp")
    env: dict[str, str] | None = None
    allowed_tools: list[str] | None = Field(None, description="offer only these of its tools; null: all")
    timeout_s: float = Field(10.0, gt=0, description="per call; then the model gets an error result")
    startup_timeout_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _one_transport(self) -> "McpToolsConfig":
        if (self.command is None) == (self.url is None):
            raise ValueError("an mcp tools entry needs either command (stdio) or url (streamable HTTP)")
        return self

    @property
    def label(self) -> str:
        return self.url or " ".join([self.command or "", *self.args])


ToolConfig = Annotated[PythonToolConfig | McpToolsConfig, Field(discriminator="type")]
