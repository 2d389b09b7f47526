"""Config helpers shared by the server config (realtime/config.py) and every stage's options.

Each stage section names an implementation (`impl`) and passes the rest to that implementation's
own pydantic `Options` model (validate_options), so a typo in any option is an error that names it.
"""
from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(Exception):
    """A config file that cannot be used; the message says where and why."""


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    impl: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def validate_options(model: type[BaseModel], section: str, options: dict[str, Any]) -> Any:
    """Validate one stage's options with its implementation's Options model."""
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        raise ConfigError(f"{section}: {explain(exc)}") from None


def explain(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"{where}: {err['msg']}")
    return "; ".join(lines)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's messages span several lines; a config error is one line."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem
