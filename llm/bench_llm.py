"""Measure the bundled LLM: server start time, time to first token, tokens/s (streamed deltas).

    python -m llm.bench_llm [--repeats 3] [--threads N]

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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=120)
    args = parser.parse_args()
    asyncio.run(main(args.repeats, args.threads, args.max_tokens))
