"""Measure the bundled LLM: server start time, time to first token, tokens/s (streamed deltas).

    python -m llm.bench_llm [--repeats 3] [--threads N]
    python -m llm.bench_llm --conversation --sessions 2 [--no-warm] [--cache-mb 0] [--batch-threads N]

The second form plays `sessions` conversations taking turns on one server, as concurrent callers
do, and reports the first-token time of each turn's prompt (history + a new question), with or
without the prefix warm-up and the prompt-state cache (docs/llm.md).

Numbers go to docs/llm.md; they are wall-clock on whatever machine runs this.
"""
from __future__ import annotations

import argparse
import asyncio
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


async def main(repeats: int, threads: int | None, max_tokens: int) -> None:
    from realtime import assets

    gguf = assets.package_file(assets.ASSETS["smollm2-135m"].files[0].parts[0])
    log = Path(tempfile.mkdtemp()) / "llama-server.log"
    server = LlamaServer(gguf, "smollm2-135m", n_threads=threads, log_path=log)
    client = OpenAIChatClient(Options(model="smollm2-135m", max_tokens=max_tokens, temperature=0.6), server)
    await client.start()
    try:
        ttft, rates, counts = [], [], []
        cold_ttft = 0.0
        for i in range(repeats + 1):  # the first request is cold: the whole prompt is evaluated
            t0 = time.perf_counter()
            stamps = []
            text = ""
            async for piece in client.stream([SYSTEM, Message("user", QUESTIONS[i % len(QUESTIONS)])]):
                stamps.append(time.perf_counter())
                text += piece
            if i == 0:
                cold_ttft = stamps[0] - t0
                continue
            ttft.append(stamps[0] - t0)  # the system prompt is cached, the new question is not
            counts.append(len(stamps))
            if len(stamps) > 1:
                rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
        print(f"server start (spawn to /v1/models answering): {server.startup_seconds:.2f} s, "
              f"{server.n_threads} threads")
        print(f"time to first token, first request (cold prompt): {cold_ttft * 1000:.0f} ms")
        print(f"time to first token, new question (system prompt cached): median {statistics.median(ttft) * 1000:.0f} ms "
              f"(min {min(ttft) * 1000:.0f}, max {max(ttft) * 1000:.0f}) over {repeats}")
        print(f"decode speed: median {statistics.median(rates):.1f} tokens/s "
              f"(streamed deltas; replies of {min(counts)}-{max(counts)} deltas)")
        print(f"last reply: {text.strip()!r}")
        print(f"server log: {log}")
    finally:
        await client.close()


async def conversation(sessions: int, turns: int, warm: bool, cache_mb: int, threads: int | None,
                       batch_threads: int | None) -> None:
    from realtime import assets

    gguf = assets.package_file(assets.ASSETS["smollm2-135m"].files[0].parts[0])
    log = Path(tempfile.mkdtemp()) / "llama-server.log"
    server = LlamaServer(gguf, "smollm2-135m", n_threads=threads, n_threads_batch=batch_threads,
                         prompt_cache_mb=cache_mb, log_path=log)
    client = OpenAIChatClient(Options(model="smollm2-135m", max_tokens=30, temperature=0.6, warm_prefix=warm), server)
    await client.start()
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
                    text += piece
                if turn > 0:  # the first turn is cold for every variant
                    ttft.append(first or 0.0)
                history += [question, Message("assistant", text.strip())]
        print(f"{sessions} sessions x {turns} turns, warm={warm}, cache={cache_mb} MB, threads "
              f"{server.n_threads}/{server.n_threads_batch}: first token median "
              f"{statistics.median(ttft) * 1000:.0f} ms (min {min(ttft) * 1000:.0f}, max {max(ttft) * 1000:.0f}) "
              f"over {len(ttft)} turns after the first")
        print(f"server log: {log}")
    finally:
        await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=120)
    parser.add_argument("--conversation", action="store_true", help="sessions taking turns (see above)")
    parser.add_argument("--sessions", type=int, default=2)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--no-warm", action="store_true")
    parser.add_argument("--cache-mb", type=int, default=256)
    parser.add_argument("--batch-threads", type=int, default=None)
    args = parser.parse_args()
    if args.conversation:
        asyncio.run(conversation(args.sessions, args.turns, not args.no_warm, args.cache_mb, args.threads,
                                 args.batch_threads))
    else:
        asyncio.run(main(args.repeats, args.threads, args.max_tokens))
