"""`step-realtime eval`: scripted conversations through a real server session, every turn checked.

Each conversation is one Realtime WebSocket session against an in-process server built from a
config. A user turn is typed (conversation.item.create) or, with --spoken, synthesized (piper for
English, espeak-ng's Mandarin voice for Chinese) and sent as audio, which the server's ASR
transcribes. A function call is answered with the turn's `tool_output`, and the answer that
follows is what is checked: the call (name, arguments), words the answer must hold, its language
(a Chinese reply in simplified Chinese characters), no markdown or lists, its length. Latency and
CPU time are recorded, not checked (they depend on the machine and its load).

One JSON line per turn, a summary line per config, and with --markdown a table of the configs side
by side (docs/evals.md). Format: evals/*.yaml (realtime/eval_spec.py)."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import yaml
from aiohttp import web

from realtime import eval_checks as checks
from realtime.config import load_config
from realtime.eval_spec import Conversation, EvalFile, Turn, load_eval, summarize, markdown_table

DEFAULT_CONFIGS = ["configs/default.yaml"]
NOT_OFFERED = '{"error": "no data for this request"}'  # the answer to a call the turn did not expect


class Events:
    """The session's server events, read one response at a time."""

    def __init__(self, ws, timeout: float) -> None:
        self.ws = ws
        self.timeout = timeout
        self.errors: list[str] = []  # error events (e.g. invalid_tool_call: the session goes on)
        self.tool_status: dict[str, str] = {}  # call_id -> step.tool_call status

    def _note(self, event: dict) -> None:
        if event["type"] == "error":
            self.errors.append(f"{event['error'].get('code')}: {event['error'].get('message')}")
        elif event["type"] == "step.tool_call":
            self.tool_status[event["call_id"]] = event["status"]

    async def next(self, type_: str) -> dict:
        async def find():
            async for msg in self.ws:
                event = json.loads(msg.data)
                self._note(event)
                if event["type"] == type_:
                    return event
            raise RuntimeError(f"the session ended before {type_}")
        return await asyncio.wait_for(find(), self.timeout)

    async def statuses(self, call_ids: list[str]) -> dict[str, str]:
        """The server's word on each call: "client" (ours to answer), "invalid" (it answered)…"""
        while not all(c in self.tool_status for c in call_ids):
            await self.next("step.tool_call")
        return {c: self.tool_status[c] for c in call_ids}

    async def response(self, t0: float) -> dict[str, Any]:
        """Until response.done and its step.turn_metrics: the response, first audio, metrics."""
        first_audio = done = metrics = None

        async def read():
            nonlocal first_audio, done, metrics
            async for msg in self.ws:
                event = json.loads(msg.data)
                self._note(event)
                kind = event["type"]
                if kind == "response.output_audio.delta" and first_audio is None:
                    first_audio = time.monotonic()
                elif kind == "response.done":
                    done = event["response"]
                elif kind == "step.turn_metrics" and done is not None and event["response_id"] == done["id"]:
                    metrics = event["values"]
                    return
            raise RuntimeError("the session ended during a response")
        await asyncio.wait_for(read(), self.timeout)
        assert done is not None
        return {"response": done, "metrics": metrics or {}, "done_ms": _ms(t0, time.monotonic()),
                "first_audio_ms": _ms(t0, first_audio) if first_audio else None}


def _ms(t0: float, t1: float) -> float:
    return round((t1 - t0) * 1000, 1)


def _said(response: dict) -> str:
    message = next((o for o in response["output"] if o["type"] == "message"), None)
    return (message["content"][0].get("transcript") or "") if message else ""


class Voice:
    """The caller's voice for --spoken: a decoder stage, 24 kHz pcm16 out."""

    def __init__(self, impl: str, cache_dir: Path) -> None:
        from core.stages import BuildEnv, build_stage

        # espeak-ng's Mandarin at 120 words/minute: Whisper base gets more of it right than at 175.
        slow = {"speed_wpm": 120}
        options = {"voice": "piper-joe", "fallback": "espeak", "espeak": slow} if impl == "piper" else slow
        self.decoder = build_stage("decoder", impl, options, BuildEnv(cache_dir))

    async def speak(self, text: str) -> np.ndarray:
        import soxr

        async def pieces():
            yield text
        chunks = [c async for c in self.decoder.synthesize(pieces())]
        pcm = np.concatenate([c.pcm for c in chunks]).astype(np.float32) / 32768
        out = soxr.resample(pcm, chunks[0].sample_rate, 24_000)
        return np.clip(out * 32768, -32768, 32767).astype(np.int16)


async def _user_turn(ws, events: Events, turn: Turn, voice: Voice | None, out: dict) -> None:
    if voice is None:
        await ws.send_json({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": turn.say}]}})
        return
    from realtime.audio import encode_pcm16

    pcm = np.concatenate([np.zeros(4800, np.int16), await voice.speak(turn.say), np.zeros(12000, np.int16)])
    for i in range(0, len(pcm), 4800):  # 200 ms appends
        await ws.send_json({"type": "input_audio_buffer.append", "audio": encode_pcm16(pcm[i:i + 4800])})
    t = time.monotonic()
    await ws.send_json({"type": "input_audio_buffer.commit"})
    done = await events.next("conversation.item.input_audio_transcription.completed")
    out["asr_ms"] = _ms(t, time.monotonic())
    out["heard"] = done["transcript"]


async def run_turn(ws, events: Events, conv: Conversation, turn: Turn, voice: Voice | None,
                   max_words: float, cpu) -> dict[str, Any]:
    out: dict[str, Any] = {"conversation": conv.name, "language": conv.language, "say": turn.say}
    await _user_turn(ws, events, turn, voice, out)
    cpu_before = cpu()
    t0 = time.monotonic()
    await ws.send_json({"type": "response.create"})
    first = await events.response(t0)
    out["first_token_ms"] = first["metrics"].get("llm_ttft_ms")
    calls = [o for o in first["response"]["output"] if o["type"] == "function_call"]
    out["call"] = {"name": calls[0]["name"], "arguments": calls[0]["arguments"]} if calls else None
    answer = first
    if calls:
        out["call_ms"] = first["done_ms"]
        statuses = await events.statuses([c["call_id"] for c in calls])
        ours = [c for c in calls if statuses[c["call_id"]] == "client"]
        for call in ours:
            output = turn.tool_output if turn.tool_output is not None and call is calls[0] else NOT_OFFERED
            await ws.send_json({"type": "conversation.item.create", "item": {
                "type": "function_call_output", "call_id": call["call_id"], "output": output}})
        t1 = time.monotonic()
        if ours:
            await ws.send_json({"type": "response.create", "response": {"tool_choice": "none"}})
        # else the server answered the calls itself (an unknown tool, bad arguments) and goes on
        answer = await events.response(t1)
        out["answer_first_token_ms"] = answer["metrics"].get("llm_ttft_ms")
        answer["first_audio_ms"] = answer["first_audio_ms"] and round(answer["first_audio_ms"] + first["done_ms"], 1)
    out["first_audio_ms"] = answer["first_audio_ms"]  # from response.create (a call's round trip included)
    out["reply_ms"] = _ms(t0, time.monotonic())  # response.done waits until the audio has played
    out["llm_ms"] = answer["metrics"].get("llm_ms")  # the whole reply's text, from the LLM
    out["llm_cpu_ms"] = round((cpu() - cpu_before) * 1000, 1)
    said = out["said"] = _said(answer["response"]).strip()
    if events.errors:
        out["errors"], events.errors = events.errors, []
    problems = {
        "call": checks.call_problem(turn.expect_call, calls[0] if calls else None),
        "words": checks.words_problem(said, turn.expect_any, turn.expect_all),
        "language": checks.language_problem(said, turn.language or conv.language),
        "markdown": checks.markdown_problem(said),
        "length": checks.length_problem(said, turn.max_words or max_words),
    }
    out["failed"] = {k: v for k, v in problems.items() if v}
    out["passed"] = not out["failed"]
    return out


async def run_conversation(url: str, spec: EvalFile, conv: Conversation, voice: Voice | None,
                           timeout: float, cpu, emit) -> list[dict]:
    results = []
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        events = Events(ws, timeout)
        session: dict[str, Any] = {"tools": spec.tools, "audio": {"input": {"turn_detection": None}}}
        if spec.instructions is not None:
            session["instructions"] = spec.instructions
        await ws.send_json({"type": "session.update", "session": session})
        await events.next("session.updated")
        for i, turn in enumerate(conv.turns):
            try:
                result = await run_turn(ws, events, conv, turn, voice, spec.max_words, cpu)
            except (RuntimeError, asyncio.TimeoutError) as exc:  # this turn failed; the next conversation goes on
                result = {"conversation": conv.name, "language": conv.language, "say": turn.say,
                          "failed": {"error": repr(exc)}, "passed": False}
            result["turn"] = i + 1
            result["tools"] = conv.uses_tools
            emit(json.dumps(result, ensure_ascii=False))
            results.append(result)
            if "error" in result["failed"]:
                break
    return results


def _llm_probe(app) -> tuple[Any, str | None]:
    """(CPU-seconds reader of the bundled llama-server, its /metrics URL), when there is one."""
    import psutil

    from realtime.app import SERVER_KEY

    server = getattr(app[SERVER_KEY].stages.get("llm"), "server", None)
    proc = getattr(server, "_proc", None)
    if proc is None:
        return (lambda: 0.0), None
    ps = psutil.Process(proc.pid)
    return (lambda: sum(ps.cpu_times()[:2])), f"{server.root_url}/metrics"


async def _llama_counters(url: str | None) -> dict[str, float]:
    if url is None:
        return {}
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        text = await resp.text()
    return {name.split(":", 1)[1]: float(value) for name, value in
            (line.split()[:2] for line in text.splitlines() if line.startswith("llamacpp:"))}


async def run_eval(config_path: str, eval_paths: list[str], timeout: float, spoken: bool = False,
                   voice_impl: str = "piper", emit=print, overrides: dict | None = None) -> dict[str, Any]:
    from realtime.app import create_app

    specs = [load_eval(path) for path in eval_paths]
    # A loopback server only this process talks to: auth off. Only the eval files' tools: the
    # config's server-side tools would answer calls themselves.
    config = load_config(config_path, {"server.port": 0, "tools": [], "server.auth.enabled": False,
                                       **(overrides or {})})
    app = create_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    voice = Voice(voice_impl, config.cache_path) if spoken else None
    results: list[dict] = []
    try:
        cpu, metrics_url = _llm_probe(app)
        before = await _llama_counters(metrics_url)
        for spec in specs:
            for conv in spec.conversations:
                results += await run_conversation(f"http://127.0.0.1:{port}/v1/realtime", spec, conv, voice,
                                                  timeout, cpu, emit)
        after = await _llama_counters(metrics_url)
    finally:
        if voice is not None and hasattr(voice.decoder, "close"):
            await voice.decoder.close()
        await runner.cleanup()
    summary = summarize(results, before, after)
    summary.update(config=config_path + "".join(f" {k}=…" for k in overrides or {}),
                   input="spoken" if spoken else "text")
    emit(json.dumps(summary, ensure_ascii=False))
    return {"summary": summary, "turns": results}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="step-realtime eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="eval files, e.g. evals/*.yaml")
    parser.add_argument("--config", action="append", help="a config to evaluate (repeatable); "
                        f"default: {DEFAULT_CONFIGS[0]}, and it is always run first unless --only")
    parser.add_argument("--only", action="store_true", help="only the --config(s) given, not the default")
    parser.add_argument("--spoken", action="store_true", help="the user's turns as synthesized speech (ASR in)")
    parser.add_argument("--voice", default="piper", choices=["piper", "espeak"], help="the caller's voice for --spoken")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds one response may take")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value in every config (YAML value), e.g. "
                             "context.system_prompt='Answer briefly.'")
    parser.add_argument("--json", help="write every turn and summary here (JSON)")
    parser.add_argument("--markdown", help="write the side-by-side table here")
    args = parser.parse_args(argv)
    configs = list(args.config or [])
    if not args.only:
        configs = DEFAULT_CONFIGS + [c for c in configs if c not in DEFAULT_CONFIGS]
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    runs = [asyncio.run(run_eval(c, args.files, args.timeout, args.spoken, args.voice, overrides=overrides))
            for c in configs]
    if args.json:
        Path(args.json).write_text(json.dumps(runs, ensure_ascii=False, indent=1), encoding="utf-8")
    table = markdown_table([r["summary"] for r in runs])
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n", encoding="utf-8")
    return 0 if all(t["passed"] for r in runs for t in r["turns"]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
