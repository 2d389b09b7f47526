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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from decoder.step_audio.ras import violations
from decoder.step_audio.vllm_source import VLLMAudioSource

PROMPTS = ["Hmm... ... ... ... ... ... ... ...", "I love love love love love love love love love",
           "The list: a, a, a, a, a, a, a, a,", "Once upon a time there was a little cat who"]


class LlamaServerIds:
    """How token ids travel through llama.cpp's llama-server (an IdChannel of
    decoder.step_audio.completion_ids; it belongs there). Prompts go as lists of ids, which
    /v1/completions takes as they are. With `logprobs` set every streamed event is one token and
    carries its id (`logprobs.content[0].id`, an extra field to the OpenAI schema). A token that is
    only part of a UTF-8 character is not streamed on its own: its text comes with the next
    token's event, and only that token's id; such an event (text longer than its token's own
    piece) is an error, as the id history would no longer be exact."""

    request_fields: dict[str, Any] = {"logprobs": 1}

    def __init__(self, base_url: str) -> None:
        root = base_url.rstrip("/")
        self.root = root[:-3] if root.endswith("/v1") else root
        self._pieces: dict[int, str] = {}
        self._session: aiohttp.ClientSession | None = None

    async def _post(self, path: str, body: dict) -> dict:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        async with self._session.post(self.root + path, json=body) as resp:
            if resp.status != 200:
                raise RuntimeError(f"{self.root}{path}: HTTP {resp.status}: {(await resp.text())[:200]}")
            return await resp.json()

    async def prompt(self, ids: Sequence[int]) -> list[int]:
        return list(ids)

    async def tokenize(self, text: str) -> list[int]:
        return list((await self._post("/tokenize", {"content": text, "add_special": False}))["tokens"])

    async def piece(self, token: int) -> str:
        if token not in self._pieces:
            self._pieces[token] = (await self._post("/detokenize", {"tokens": [token]}))["content"]
        return self._pieces[token]

    def reader(self) -> "_LlamaServerReader":
        return _LlamaServerReader(self)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class _LlamaServerReader:
    def __init__(self, channel: LlamaServerIds) -> None:
        self._channel = channel

    async def feed(self, choice: Any) -> list[int]:
        content = getattr(choice.logprobs, "content", None) if choice.logprobs is not None else None
        if not content:
            if choice.text:
                raise ValueError("llama-server event without logprobs: request logprobs")
            return []  # the end of the stream (or the end token, which is not printed)
        token = int(content[0]["id"])
        if len(content) == 1 and choice.text and choice.text != await self._channel.piece(token):
            raise ValueError(f"event text {choice.text!r} is more than token {token}'s own piece: "
                             "an earlier token (part of a UTF-8 character) was not streamed on its own")
        return [int(c["id"]) for c in content]


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
