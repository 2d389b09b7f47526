"""`step-realtime eval` (realtime/eval.py) over fake stages, and its checks (realtime/eval_checks.py).
The full suite against the real models is a command, not a test (docs/evals.md)."""
from __future__ import annotations

import json

import pytest
import yaml

from realtime import eval_checks as checks
from realtime.eval import main as eval_main, run_eval
from realtime.eval_spec import load_eval
from tests.realtime_util import REPO


def test_the_suite_has_what_the_issue_asks() -> None:
    convs = [c for f in sorted((REPO / "evals").glob("*.yaml")) for c in load_eval(str(f)).conversations]
    assert len(convs) >= 20
    assert sum(c.language == "zh" for c in convs) >= 6
    assert sum(c.uses_tools for c in convs) >= 6
    assert any(len(c.turns) > 1 and c.uses_tools for c in convs)
    assert len({c.name for c in convs}) == len(convs)


def test_language_check() -> None:
    assert checks.language_problem("北京今天晴，气温二十五度。", "zh") == ""
    assert "traditional" in checks.language_problem("秋風吹過，天氣很好。", "zh")
    assert "not Chinese" in checks.language_problem("The weather in Beijing is sunny.", "zh")
    assert checks.language_problem("It is 25 degrees in Beijing.", "en") == ""
    assert "Han" in checks.language_problem("It is 晴 today.", "en")


def test_markdown_length_words_and_call_checks() -> None:
    assert "list" in checks.markdown_problem("Pack these:\n1. boots\n2. a jacket")
    assert "list" in checks.markdown_problem("- boots\n- a jacket")
    assert "list" in checks.markdown_problem("You should include: 1. A backpack 2. A map")
    assert "list" in checks.markdown_problem("you can choose: - A pair of boots. - A map.")
    assert "JSON" in checks.markdown_problem('{"message": "There was an error."}')
    assert checks.markdown_problem("Paris - the capital - is lovely") != ""  # two dashes read as bullets
    assert checks.markdown_problem("Paris - the capital of France.") == ""
    assert checks.markdown_problem("Bring boots, a warm jacket and water.") == ""
    assert checks.markdown_problem("It costs 1. 5 dollars, or 2. 5 euros") != ""  # a list as far as we can tell
    assert checks.markdown_problem("Room 1. Then floor 12.") == ""
    assert checks.markdown_problem("Take **boots**") != ""
    assert checks.length_problem("one two three", max_words=2) != ""
    assert checks.length_problem("", max_words=60) != ""
    assert checks.spoken_words("我很好") == 1.5
    assert checks.words_problem("It is twenty-one degrees", ["21", "twenty-one"], []) == ""
    assert checks.words_problem("It is warm", ["21"], []) != ""
    assert checks.words_problem("Friday, shipped", [], ["friday", "SHIPPED"]) == ""
    call = {"name": "get_weather", "arguments": '{"city": "北京"}'}
    assert checks.call_problem({"name": "get_weather", "arguments": {"city": ["Beijing", "北京"]}}, call) == ""
    assert checks.call_problem({"name": "get_weather", "arguments": {"city": "Paris"}}, call) != ""
    assert checks.call_problem({"name": "get_order_status"}, call) != ""
    assert checks.call_problem(None, call) != "" and checks.call_problem(None, None) == ""
    assert checks.call_problem({"name": "book_table", "arguments": {"people": 4}},
                               {"name": "book_table", "arguments": '{"people": 4, "time": "19:00"}'}) == ""
    assert "not JSON" in checks.call_problem({"name": "x"}, {"name": "x", "arguments": "{city"})


def _fake_config(tmp_path, **llm) -> str:
    config = yaml.safe_load((REPO / "configs" / "fake.yaml").read_text())
    config["llm"].update(llm)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    return str(tmp_path / "c.yaml")


def _eval_file(tmp_path, names: list[str]) -> str:
    spec = yaml.safe_load((REPO / "evals" / "tools.yaml").read_text(encoding="utf-8"))
    spec["conversations"] = [c for c in spec["conversations"] if c["name"] in names]
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    return str(tmp_path / "e.yaml")


async def test_eval_answers_calls_and_checks_each_turn(tmp_path) -> None:
    """The fake LLM calls get_weather for Paris whatever is asked, and then says the tool's result."""
    config = _fake_config(tmp_path, tool_call={"name": "get_weather", "arguments": {"city": "Paris"}})
    lines: list[str] = []
    run = await run_eval(config, [_eval_file(tmp_path, ["weather-paris", "weather-oslo-then-berlin",
                                                        "zh-weather-beijing"])], 30, emit=lines.append)
    paris, oslo, berlin, beijing = run["turns"]
    assert paris["passed"] and paris["said"].startswith("The tool said:") and "21" in paris["said"]
    assert paris["call"]["name"] == "get_weather" and paris["first_audio_ms"] > 0 and paris["call_ms"] > 0
    assert oslo["failed"].keys() == {"call"}  # Paris instead of Oslo; the answer still said the result
    assert berlin["turn"] == 2 and "call" in berlin["failed"]
    assert "language" in beijing["failed"] and "call" in beijing["failed"]  # an English reply to Chinese
    summary = json.loads(lines[-1])
    assert summary["turns_passed"] == "1/4" and summary["conversations_passed"] == "1/3"
    assert summary["calls_ok"] == "1/4" and summary["zh"] == "0/1"


async def test_spoken_turns_go_through_the_servers_asr(tmp_path) -> None:
    """--spoken: the question is synthesized (espeak-ng) and transcribed by the server's tokenizer
    (the fake one writes a word per 200 ms of speech)."""
    from tests.speech_util import espeak

    espeak("test")  # skips without espeak-ng (fails under CI)
    config = _fake_config(tmp_path, echo=False, reply="Paris is the capital of France.")
    spec = yaml.safe_load((REPO / "evals" / "conversation.yaml").read_text(encoding="utf-8"))
    spec["conversations"] = [c for c in spec["conversations"] if c["name"] in ("capital-of-france", "zh-capital")]
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    run = await run_eval(config, [str(tmp_path / "e.yaml")], 30, spoken=True, voice_impl="espeak",
                         emit=lambda line: None)
    english, chinese = run["turns"]
    assert english["conversation"] == "capital-of-france" and english["passed"], english
    assert english["heard"].split() and english["asr_ms"] > 0
    assert chinese["heard"].split() and set(chinese["failed"]) == {"words", "language"}


def test_cli_exit_status_and_table(tmp_path, capsys) -> None:
    config = _fake_config(tmp_path, echo=False, reply="Paris.")
    spec = {"conversations": [{"name": "paris", "turns": [{"say": "Capital of France?", "expect_any": ["Paris"]}]}]}
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(spec))
    assert eval_main([str(tmp_path / "ok.yaml"), "--only", "--config", config,
                      "--markdown", str(tmp_path / "t.md"), "--json", str(tmp_path / "r.json")]) == 0
    assert "| turns passed | 1/1 |" in (tmp_path / "t.md").read_text()
    assert json.loads((tmp_path / "r.json").read_text())[0]["turns"][0]["passed"]
    spec["conversations"][0]["turns"][0]["expect_any"] = ["Lyon"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    assert eval_main([str(tmp_path / "bad.yaml"), "--only", "--config", config]) == 1


def test_a_bad_eval_file_names_itself(tmp_path) -> None:
    from core.config import ConfigError

    (tmp_path / "x.yaml").write_text(yaml.safe_dump({"conversations": [{"name": "a", "language": "fr",
                                                                        "turns": [{"say": "hi"}]}]}))
    with pytest.raises(ConfigError, match="x.yaml"):
        load_eval(str(tmp_path / "x.yaml"))


async def test_a_call_of_an_unknown_tool_is_answered_by_the_server_and_the_turn_goes_on(tmp_path) -> None:
    config = _fake_config(tmp_path, tool_call={"name": "transact_to_human", "arguments": {}})
    run = await run_eval(config, [_eval_file(tmp_path, ["transfer-to-human", "no-tool-needed"])], 30,
                         emit=lambda line: None)
    transfer, plain = run["turns"]
    assert transfer["call"]["name"] == "transact_to_human" and "call" in transfer["failed"]
    assert any(e.startswith("invalid_tool_call") for e in transfer["errors"])
    assert "unknown tool" in transfer["said"]  # the server's error result, said by the fake
    assert plain["conversation"] == "no-tool-needed" and "error" not in plain["failed"]
