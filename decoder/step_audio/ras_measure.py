"""What client-side repetition-aware sampling costs over a completions server (docs numbers).

Runs the bundled llama.cpp server (llama-server, SmolLM2-135M, the embedded LLM) and generates
from a few prompts at temperature 0.7, with and without the rule, through VLLMAudioSource +
LlamaServerIds: reports tokens, violations of the rule, restarts, and wall time per token.

    .venv/bin/python -m decoder.step_audio.ras_measure [--tokens 64] [--runs 3]
"""
from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from decoder.step_audio.completion_ids import LlamaServerIds
from decoder.step_audio.ras import violations
from decoder.step_audio.vllm_source import VLLMAudioSource

PROMPTS = ["Hmm... ... ... ... ... ... ... ...", "I love love love love love love love love love",
           "The list: a, a, a, a, a, a, a, a,", "Once upon a time there was a little cat who"]


async def run(tokens: int, runs: int) -> None:
    from llm.llama_server import LlamaServer
    from core import assets

    gguf = assets.package_file(assets.ASSETS["smollm2-135m"].files[0].parts[0])
    server = LlamaServer(gguf, "smol", n_parallel=1, n_ctx=1024, log_path=Path("/tmp/ras_measure_llama.log"))
    url = await server.start()
    try:
        for ras in (False, True):
            source = VLLMAudioSource(url, "smol", temperature=0.7, max_tokens=tokens, ras=ras, ids=LlamaServerIds(url))
            redraw_s: list[float] = []
            redraw = source._redraw

            async def timed_redraw(history, banned, redraw=redraw, redraw_s=redraw_s):
                t0 = time.monotonic()
                try:
                    return await redraw(history, banned)
                finally:
                    redraw_s.append(time.monotonic() - t0)
            source._redraw = timed_redraw
            n = bad = skipped = 0
            start = time.monotonic()
            for _ in range(runs):
                for text in PROMPTS:
                    prompt = await source.ids.tokenize(text)
                    out: list[int] = []
                    try:
                        async for t in source.tokens(prompt):
                            out.append(t)
                    except ValueError:  # a token that is not whole UTF-8 text: its id was not streamed
                        skipped += 1
                    n, bad = n + len(out), bad + violations(prompt, out)
            wall = time.monotonic() - start
            print(f"ras={ras}: {n} tokens, {bad} violations, {source.restarts} restarts "
                  f"({100 * source.restarts / max(n, 1):.1f} per 100 tokens), {1000 * wall / max(n, 1):.1f} ms/token, "
                  f"one-token redraw {1000 * sum(redraw_s) / max(len(redraw_s), 1):.0f} ms on average, "
                  f"{skipped} replies cut at a partial-UTF-8 token")
            await source.close()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    asyncio.run(run(args.tokens, args.runs))


if __name__ == "__main__":
    main()
