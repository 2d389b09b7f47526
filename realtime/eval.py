"""`step-realtime eval`: a file of typed turns through a real server session (any config), each
checked for the tool it should call and the words its spoken answer should hold. One JSON line per
case, then a summary; exit 0 when every case passed. Format: evals/tools.yaml."""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from pydantic import BaseModel, ConfigDict

from realtime.config import load_config


class Case(BaseModel):
    model_config = ConfigDict(extra="forbid")
    say: str
    expect_call: dict | None = None  # {name, arguments: {key: value (case-insensitive for strings)}}
    tool_output: str | None = None  # answered to the call, then the model speaks
    expect_words: list[str] = []  # any of them in the final answer (case-insensitive)


class EvalFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instructions: str | None = None
    tools: list[dict] = []
    cases: list[Case]


async def _next(ws, type_: str, timeout: float) -> dict:
    async def find():
        async for msg in ws:
            event = json.loads(msg.data)
            if event["type"] == type_:
                return event
        raise RuntimeError(f"the session ended before {type_}")
    return await asyncio.wait_for(find(), timeout)


async def run_case(url: str, spec: EvalFile, case: Case, timeout: float) -> dict[str, Any]:
    out: dict[str, Any] = {"say": case.say}
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        session = {"tools": spec.tools, "audio": {"input": {"turn_detection": None}}}
        if spec.instructions is not None:
            session["instructions"] = spec.instructions
        await ws.send_json({"type": "session.update", "session": session})
        await _next(ws, "session.updated", timeout)
        await ws.send_json({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": case.say}]}})
        t = time.monotonic()
        await ws.send_json({"type": "response.create"})
        done = (await _next(ws, "response.done", timeout))["response"]
        out["first_response_s"] = round(time.monotonic() - t, 3)
        calls = [o for o in done["output"] if o["type"] == "function_call"]
        out["call"] = {"name": calls[0]["name"], "arguments": calls[0]["arguments"]} if calls else None
        out["call_ok"] = _call_ok(case.expect_call, calls[0] if calls else None)
        said = done["output"][0]["content"][0]["transcript"] or ""
        if calls and case.tool_output is not None:
            await ws.send_json({"type": "conversation.item.create", "item": {
                "type": "function_call_output", "call_id": calls[0]["call_id"], "output": case.tool_output}})
            t = time.monotonic()
            await ws.send_json({"type": "response.create", "response": {"tool_choice": "none"}})
            final = (await _next(ws, "response.done", timeout))["response"]
            out["answer_s"] = round(time.monotonic() - t, 3)
            said = final["output"][0]["content"][0]["transcript"] or ""
    out["said"] = said
    out["words_ok"] = not case.expect_words or any(w.lower() in said.lower() for w in case.expect_words)
    out["passed"] = out["call_ok"] and out["words_ok"]
    return out


def _call_ok(expected: dict | None, call: dict | None) -> bool:
    if expected is None or call is None:
        return expected is None and call is None
    if call["name"] != expected.get("name"):
        return False
    try:
        args = json.loads(call["arguments"] or "{}")
    except ValueError:
        return False
    norm = lambda v: v.strip().lower() if isinstance(v, str) else v  # noqa: E731
    return all(norm(args.get(k)) == norm(v) for k, v in (expected.get("arguments") or {}).items())


async def run_eval(config_path: str, eval_path: str, timeout: float, emit=print) -> list[dict]:
    from realtime.app import create_app

    spec = EvalFile.model_validate(yaml.safe_load(Path(eval_path).read_text(encoding="utf-8")))
    # A loopback server only this process talks to: auth off. Only the eval file's tools: the config's server-side tools would answer calls themselves.
    runner = web.AppRunner(create_app(load_config(config_path, {"server.port": 0, "tools": [],
                                                         "server.auth.enabled": False})))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    results = []
    try:
        for case in spec.cases:
            result = await run_case(f"http://127.0.0.1:{port}/v1/realtime", spec, case, timeout)
            emit(json.dumps(result))
            results.append(result)
    finally:
        await runner.cleanup()
    firsts = [r["first_response_s"] for r in results]
    emit(json.dumps({"passed": sum(r["passed"] for r in results), "cases": len(results),
                     "calls_ok": sum(r["call_ok"] for r in results),
                     "first_response_median_s": statistics.median(firsts) if firsts else None}))
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="step-realtime eval", description=__doc__)
    parser.add_argument("file", help="an eval file, e.g. evals/tools.yaml")
    parser.add_argument("--config", default="configs/qwen.yaml")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one response may take")
    args = parser.parse_args(argv)
    results = asyncio.run(run_eval(args.config, args.file, args.timeout))
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
