"""`step-realtime eval` (realtime/eval.py) over fake stages: a case that calls the tool, one that
should not."""
from __future__ import annotations

import json

import yaml

from realtime.eval import run_eval
from tests.realtime_util import REPO


async def test_eval_reports_calls_and_answers(tmp_path) -> None:
    config = yaml.safe_load((REPO / "configs" / "fake.yaml").read_text())
    config["llm"]["tool_call"] = {"name": "get_weather", "arguments": {"city": "Paris"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    spec = yaml.safe_load((REPO / "evals" / "tools.yaml").read_text())
    spec["cases"] = spec["cases"][:2]
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(spec))
    lines: list[str] = []
    results = await run_eval(str(tmp_path / "c.yaml"), str(tmp_path / "e.yaml"), 30, lines.append)
    first, second = results
    assert first["call_ok"] and first["said"].startswith("The tool said:") and first["words_ok"] and first["passed"]
    assert not second["call_ok"]  # the fake asks about Paris when Oslo was meant
    assert json.loads(lines[-1])["passed"] == 1 and json.loads(lines[-1])["cases"] == 2
