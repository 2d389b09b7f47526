"""The eval file format of `step-realtime eval` (realtime/eval.py), and its summaries.

```yaml
instructions: null        # the session's instructions; null: the config's system prompt
tools: [{type: function, name: get_weather, description: …, parameters: {…}}]   # offered in every session
max_words: 60             # reply length bound (a Han character counts half a word)
conversations:
  - name: weather-then-berlin
    language: en          # of the user, and of the replies (en, zh)
    turns:
      - say: What is the weather in Paris today?
        expect_call: {name: get_weather, arguments: {city: [Paris, paris]}}   # omitted/null: no call
        tool_output: '{"sky": "sunny", "temperature_c": 21}'
        expect_any: ["21", twenty-one]    # the answer says at least one of these
        expect_all: []                    # … and all of these
```
"""
from __future__ import annotations

import statistics
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    say: str
    expect_call: dict | None = None
    tool_output: str | None = None
    expect_any: list[str] = []
    expect_all: list[str] = []
    language: str | None = Field(None, pattern="^(en|zh)$", description="of the reply; default: the conversation's")
    max_words: float | None = None


class Conversation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    language: str = Field("en", pattern="^(en|zh)$")
    turns: list[Turn] = Field(min_length=1)

    @property
    def uses_tools(self) -> bool:
        return any(t.expect_call for t in self.turns)


class EvalFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instructions: str | None = None
    tools: list[dict] = []
    max_words: float = 60
    conversations: list[Conversation] = Field(min_length=1)


def load_eval(path: str) -> EvalFile:
    from core.config import ConfigError

    try:
        return EvalFile.model_validate(yaml.safe_load(Path(path).read_text(encoding="utf-8")))
    except Exception as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 1) if values else None


def _count(items) -> str:
    return str(sum(1 for _ in items))


def summarize(turns: list[dict], before: dict[str, float], after: dict[str, float]) -> dict:
    def rate(group: list[dict]) -> str:
        return f"{sum(t['passed'] for t in group)}/{len(group)}" if group else "-"
    convs: dict[str, list[dict]] = {}
    for t in turns:
        convs.setdefault(t["conversation"], []).append(t)
    out = {
        "turns_passed": rate(turns),
        "conversations_passed": f"{sum(all(t['passed'] for t in c) for c in convs.values())}/{len(convs)}",
        "en": rate([t for t in turns if t["language"] == "en"]),
        "zh": rate([t for t in turns if t["language"] == "zh"]),
        "tool_turns": rate([t for t in turns if t.get("tools")]),
        "calls_ok": _count(t for t in turns if t.get("tools")
                           and not {"call", "error"} & set(t["failed"])) + f"/{sum(bool(t.get('tools')) for t in turns)}",
        "first_token_ms_median": _median(t.get("first_token_ms") for t in turns),
        "first_token_ms_median_en": _median(t.get("first_token_ms") for t in turns if t["language"] == "en"),
        "first_token_ms_median_zh": _median(t.get("first_token_ms") for t in turns if t["language"] == "zh"),
        "first_audio_ms_median": _median(t.get("first_audio_ms") for t in turns),
        "llm_ms_median": _median(t.get("llm_ms") for t in turns),
        "reply_ms_median": _median(t.get("reply_ms") for t in turns),
        "llm_cpu_ms_median": _median(t.get("llm_cpu_ms") for t in turns),
        "asr_ms_median": _median(t.get("asr_ms") for t in turns),
    }
    tokens = after.get("tokens_predicted_total", 0) - before.get("tokens_predicted_total", 0)
    seconds = after.get("tokens_predicted_seconds_total", 0) - before.get("tokens_predicted_seconds_total", 0)
    if tokens and seconds:
        out["tokens_per_s"] = round(tokens / seconds, 1)  # llama-server's own decode timing
        out["tokens_generated"] = int(tokens)
    failures: dict[str, int] = {}
    for t in turns:
        for check in t.get("failed", {}):
            failures[check] = failures.get(check, 0) + 1
    out["failures_by_check"] = failures
    return out


_ROWS = [("input", "input"), ("turns passed", "turns_passed"), ("conversations passed", "conversations_passed"),
         ("English turns", "en"), ("Chinese turns", "zh"), ("turns of tool conversations", "tool_turns"),
         ("  of which the call was right", "calls_ok"), ("failed checks (turns)", "failures_by_check"),
         ("first token, median ms", "first_token_ms_median"), ("  English", "first_token_ms_median_en"),
         ("  Chinese", "first_token_ms_median_zh"), ("first audio, median ms", "first_audio_ms_median"),
         ("whole reply from the LLM, median ms", "llm_ms_median"),
         ("to response.done (audio played in real time), median ms", "reply_ms_median"), ("ASR, median ms (spoken)", "asr_ms_median"),
         ("LLM CPU per turn, median ms", "llm_cpu_ms_median"), ("decode tokens/s (llama-server)", "tokens_per_s")]


def markdown_table(summaries: list[dict]) -> str:
    def cell(value) -> str:
        if isinstance(value, dict):
            return ", ".join(f"{k} {v}" for k, v in sorted(value.items())) or "none"
        return "-" if value is None else str(value)
    lines = ["| | " + " | ".join(s["config"] for s in summaries) + " |", "|---" * (len(summaries) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(cell(s.get(key)) for s in summaries) + " |" for label, key in _ROWS]
    return "\n".join(lines)
