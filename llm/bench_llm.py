"""Measure the bundled LLM: server start time, time to first token, tokens/s (streamed deltas).

    python -m llm.bench_llm [--repeats 3] [--threads N]
    python -m llm.bench_llm --conversation --sessions 2 [--no-warm] [--cache-mb 0] [--batch-threads N]
    python -m llm.bench_llm --concurrent 1,2,4,8 [--rounds 3] [--max-tokens 64]

The second form plays `sessions` conversations taking turns on one server, as concurrent callers
do, and reports the first-token time of each turn's prompt (history + a new question), with or
without the prefix warm-up and the prompt-state cache (docs/llm.md).

The third has N sessions stream a reply at the same moment (each its own system prompt and
question), for each N: aggregate tokens/s (all streamed deltas / wall time from the common start
to the last reply's end), per-stream first-token latency and decode rate. A round per N is played
first to fill the prompt caches and not counted.

`--base-url URL` measures a server that is already running instead of starting the bundled one
(for comparisons with another build); `--server-args "..."` adds llama-server flags. Every run
prints the load average: numbers are wall-clock on whatever machine runs this.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import tempfile
import time
from pathlib import Path

from llm.base import Message
from llm.llama_server import LlamaServer
from llm.openai_chat import OpenAIChatClient, Options

SYSTEM = Message("system", "You are a friendly voice assistant. Answer in one or two short spoken sentences. "
                           "No lists, no markdown.")
QUESTIONS = [
    "What's a good way to relax after a long day at work?",
    "How do I keep basil alive on a windowsill?",
    "Can you suggest a quick dinner with eggs?",
    "Why is the sky blue?",
    "What should I pack for a weekend hike?",
    "How can I fall asleep faster?",
    "Is it better to run in the morning or evening?",
    "What is a fun fact about octopuses?",
]


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def _rss_mb(pid: int | None) -> str:
    if pid is None:
        return "?"
    try:
        import psutil

        return f"{psutil.Process(pid).memory_info().rss / 2**20:.0f} MiB"
    except Exception:  # noqa: BLE001 - informative only
        return "?"


async def _client(args, max_tokens: int, temperature: float = 0.6, warm: bool = True, **server_kw):
    """(client, server or None): the bundled server, started, or a client of --base-url."""
    opts = Options(model="smollm2-135m", max_tokens=max_tokens, temperature=temperature, warm_prefix=warm,
                   base_url=args.base_url)
    server = None
    if args.base_url is None:
        from core import assets

        gguf = assets.package_file(assets.ASSETS["smollm2-135m"].files[0].parts[0])
        log = Path(tempfile.mkdtemp()) / "llama-server.log"
        server = LlamaServer(gguf, "smollm2-135m", n_threads=args.threads, n_threads_batch=args.batch_threads,
                             n_parallel=args.parallel, prompt_cache_mb=args.cache_mb, log_path=log,
                             extra_args=shlex.split(args.server_args), **server_kw)
    client = OpenAIChatClient(opts, server)
    await client.start()
    if server is not None:
        print(f"server start (spawn to /health answering): {server.startup_seconds:.2f} s, threads "
              f"{server.n_threads}/{server.n_threads_batch}, {server.n_parallel} slots; log {server.log_path}")
    return client, server


async def main(args) -> None:
    client, server = await _client(args, args.max_tokens)
    try:
        ttft, rates, counts = [], [], []
        cold_ttft = 0.0
        text = ""
        for i in range(args.repeats + 1):  # the first request is cold: the whole prompt is evaluated
            t0 = time.perf_counter()
            stamps = []
            text = ""
            async for piece in client.stream([SYSTEM, Message("user", QUESTIONS[i % len(QUESTIONS)])]):
                stamps.append(time.perf_counter())
                text += piece if isinstance(piece, str) else ""  # a ReplyCut: max_tokens reached
            if i == 0:
                cold_ttft = stamps[0] - t0
                continue
            ttft.append(stamps[0] - t0)  # the system prompt is cached, the new question is not
            counts.append(len(stamps))
            if len(stamps) > 1:
                rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
        print(f"time to first token, first request (cold prompt): {cold_ttft * 1000:.0f} ms")
        print(f"time to first token, new question (system prompt cached): median {statistics.median(ttft) * 1000:.0f} ms "
              f"(min {min(ttft) * 1000:.0f}, max {max(ttft) * 1000:.0f}) over {args.repeats}")
        print(f"decode speed: median {statistics.median(rates):.1f} tokens/s "
              f"(streamed deltas; replies of {min(counts)}-{max(counts)} deltas)")
        print(f"last reply: {text.strip()!r}")
        print(_load())
    finally:
        await client.close()


async def conversation(args) -> None:
    client, server = await _client(args, 30, warm=not args.no_warm)
    sessions, turns = args.sessions, args.turns
    try:
        histories = [[Message("system", f"{SYSTEM.content} You are assistant number {k}.")] for k in range(sessions)]
        ttft: list[float] = []
        for turn in range(turns):
            for k, history in enumerate(histories):
                question = Message("user", QUESTIONS[(turn * sessions + k) % len(QUESTIONS)])
                await client.warm(history)  # a no-op with --no-warm
                t0 = time.perf_counter()
                text, first = "", None
                async for piece in client.stream(history + [question]):
                    first = first or time.perf_counter() - t0
                    text += piece if isinstance(piece, str) else ""
                if turn > 0:  # the first turn is cold for every variant
                    ttft.append(first or 0.0)
                history += [question, Message("assistant", text.strip())]
        print(f"{sessions} sessions x {turns} turns, warm={not args.no_warm}, cache={args.cache_mb} MB: first token "
              f"median {statistics.median(ttft) * 1000:.0f} ms (min {min(ttft) * 1000:.0f}, max {max(ttft) * 1000:.0f}) "
              f"over {len(ttft)} turns after the first; {_load()}")
        pid = server._proc.pid if server is not None and server._proc is not None else args.pid
        print(f"server RSS after the run: {_rss_mb(pid)}")
    finally:
        await client.close()


async def _one_stream(client: OpenAIChatClient, messages: list[Message], t0: float) -> tuple[float, float, int]:
    """(first token, end, deltas) of one streamed reply, times from t0."""
    first, n = None, 0
    async for _ in client.stream(messages):
        n += 1
        first = first or time.perf_counter() - t0
    return (first or float("nan")), time.perf_counter() - t0, n


async def concurrent(args) -> None:
    levels = [int(x) for x in args.concurrent.split(",")]
    client, server = await _client(args, args.max_tokens)
    try:
        for n in levels:
            systems = [Message("system", f"{SYSTEM.content} You are assistant number {k}.") for k in range(n)]
            firsts, rates, aggregate = [], [], []
            for r in range(args.rounds + 1):  # round 0 fills the prompt caches: not counted
                t0 = time.perf_counter()
                results = await asyncio.gather(*(
                    _one_stream(client, [systems[k], Message("user", QUESTIONS[(r * n + k) % len(QUESTIONS)])], t0)
                    for k in range(n)))
                if r == 0:
                    continue
                wall = max(end for _, end, _ in results)
                aggregate.append(sum(c for _, _, c in results) / wall)
                for first, end, count in results:
                    firsts.append(first)
                    if count > 1:
                        rates.append((count - 1) / (end - first))
            print(f"{n} at once: aggregate {statistics.median(aggregate):.1f} tokens/s (median of {args.rounds} rounds, "
                  f"{min(aggregate):.1f}-{max(aggregate):.1f}); first token median {statistics.median(firsts) * 1000:.0f} ms "
                  f"(max {max(firsts) * 1000:.0f}); per stream {statistics.median(rates):.1f} tokens/s; {_load()}",
                  flush=True)
        pid = server._proc.pid if server is not None and server._proc is not None else args.pid
        print(f"server RSS after the run: {_rss_mb(pid)}")
    finally:
        await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch-threads", type=int, default=None)
    parser.add_argument("--parallel", type=int, default=8, help="llama-server slots")
    parser.add_argument("--max-tokens", type=int, default=120)
    parser.add_argument("--conversation", action="store_true", help="sessions taking turns (see above)")
    parser.add_argument("--sessions", type=int, default=2)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--no-warm", action="store_true")
    parser.add_argument("--cache-mb", type=int, default=256)
    parser.add_argument("--concurrent", default=None, help="e.g. 1,2,4,8: sessions streaming at once")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--base-url", default=None, help="measure this running server instead")
    parser.add_argument("--pid", type=int, default=None, help="with --base-url: the server's pid, for its RSS")
    parser.add_argument("--server-args", default="", help="extra llama-server flags")
    args = parser.parse_args()
    print(_load(), flush=True)
    if args.conversation:
        asyncio.run(conversation(args))
    elif args.concurrent:
        asyncio.run(concurrent(args))
    else:
        asyncio.run(main(args))
