"""Function calling in the Realtime protocol: session tools in, function-call items out.

Shapes follow the openai SDK's types (RealtimeFunctionTool, RealtimeConversationItemFunctionCall,
…Output, ResponseFunctionCallArguments{Delta,Done}Event); docs/tools.md.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.events import FunctionCallItem


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str = "function"
    name: str = Field("", pattern=r"^[A-Za-z0-9_.-]{0,64}$")
    description: str | None = None
    parameters: dict | None = None


def function_tools(tools: list[FunctionTool]) -> list[dict]:
    out: list[dict] = []
    for i, tool in enumerate(tools):
        if tool.type != "function":  # OpenAI's hosted MCP tools: configure MCP servers on the server instead
            raise _problem("unsupported_tool_type", f"tool type {tool.type!r} is not supported; use "
                           "function tools (MCP servers go in the server's config)", f"session.tools.{i}.type")
        if not tool.name:
            raise _problem("missing_field", "a function tool needs a name", f"session.tools.{i}.name")
        out.append(tool.model_dump(exclude_none=True))
    names = [t["name"] for t in out]
    if len(set(names)) != len(names):
        raise _problem("invalid_value", "tool names must be unique", "session.tools")
    return out


def response_tools(event) -> tuple[list[dict] | None, str | dict | None]:
    """response.create's `response.tools` / `response.tool_choice` (None: the session's)."""
    options = event.response or {}
    tools = options.get("tools")
    if tools is not None:
        try:
            tools = function_tools([FunctionTool.model_validate(t) for t in tools])
        except ValidationError as exc:
            raise _problem("invalid_value", f"response.tools: {exc.errors()[0]['msg']}", "response.tools") from None
    choice = options.get("tool_choice")
    return tools, None if choice is None else checked_tool_choice(choice, "response.tool_choice")


def checked_tool_choice(choice, param: str) -> str | dict:
    if choice in ("auto", "none", "required") or (
            isinstance(choice, dict) and choice.get("type") == "function" and choice.get("name")):
        return choice
    raise _problem("invalid_value", "tool_choice must be auto, none, required or {type: function, name}", param)


def _problem(code: str, message: str, param: str | None = None) -> Exception:
    from realtime.protocol import ProtocolError  # protocol.py imports this module

    return ProtocolError(code, message, param)


def function_call_item(call: FunctionCallItem, status: str | None = None) -> dict[str, Any]:
    return {"id": call.item_id, "object": "realtime.item", "type": "function_call",
            "status": status or call.status, "call_id": call.call_id, "name": call.name,
            "arguments": call.arguments}


def function_output_item(item_id: str, call_id: str, output: str) -> dict[str, Any]:
    return {"id": item_id, "object": "realtime.item", "type": "function_call_output", "status": "completed",
            "call_id": call_id, "output": output}


def create_function_item(controller, item, previous_item_id: str | None) -> tuple[str, dict]:
    """A function call's result from the client (or a past call, replayed): it joins the history."""
    if not item.call_id:
        raise _problem("missing_field", f"a {item.type} item needs a call_id", "item.call_id")
    if item.type == "function_call":
        if not item.name:
            raise _problem("missing_field", "a function_call item needs a name", "item.name")
        item_id = controller.add_function_call(item.call_id, item.name, item.arguments or "{}", item.id)
        return item_id, {"id": item_id, "object": "realtime.item", "type": "function_call", "status": "completed",
                         "call_id": item.call_id, "name": item.name, "arguments": item.arguments or "{}"}
    if item.output is None:
        raise _problem("missing_field", "a function_call_output item needs an output", "item.output")
    try:
        item_id = controller.add_function_output(item.call_id, item.output, item.id, previous_item_id)
    except LookupError as exc:
        if isinstance(exc, KeyError):
            raise
        raise _problem("invalid_value", f"no function_call with call_id {item.call_id!r} in the "
                       "conversation", "item.call_id") from None
    return item_id, function_output_item(item_id, item.call_id, item.output)

