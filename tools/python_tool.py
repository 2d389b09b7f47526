"""A server-side tool that is a Python function ("module:function" in the config)."""
from __future__ import annotations

import asyncio
import importlib
import inspect
import json
from collections.abc import Callable
from typing import Any

from pydantic import create_model

from core.config import ConfigError
from tools.config import PythonToolConfig


class PythonTool:
    def __init__(self, config: PythonToolConfig) -> None:
        self.function = _import(config.function)
        self.name = config.name or self.function.__name__
        doc = inspect.getdoc(self.function) or ""
        self.description = config.description or doc.split("\n\n")[0].replace("\n", " ")
        self.parameters = config.parameters or parameters_schema(self.function)
        self.timeout_s = config.timeout_s

    def spec(self) -> dict:
        return {"type": "function", "name": self.name, "description": self.description,
                "parameters": self.parameters}

    async def run(self, arguments: dict) -> str:
        if inspect.iscoroutinefunction(self.function):
            result = await self.function(**arguments)
        else:  # a blocking function runs in a thread: the event loop (and the audio) goes on
            result = await asyncio.to_thread(self.function, **arguments)
        return result if isinstance(result, str) else json.dumps(result, default=str)


def parameters_schema(function: Callable) -> dict[str, Any]:
    """The JSON Schema of a function's keyword arguments, from its annotations and defaults."""
    fields: dict[str, Any] = {}
    for name, param in inspect.signature(function).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = Any if param.annotation is inspect.Parameter.empty else param.annotation
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[name] = (annotation, default)
    schema = create_model(f"{function.__name__}_arguments", **fields).model_json_schema()
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    return schema


def _import(target: str) -> Callable:
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"tools: cannot import {target!r}: {exc}") from None
    if not callable(obj):
        raise ConfigError(f"tools: {target!r} is not callable")
    return obj
