"""Repetition-aware sampling over an OpenAI-compatible completions server, by rejection
(decoder.step_audio.vllm_source): against an in-test fake speaking the streaming protocol, and
against the real bundled llama.cpp server with SmolLM2-135M (integration)."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import web

from decoder.step_audio.ras import RepetitionAwareLogitsProcessor, banned_token, violations
from decoder.step_audio.vllm_source import BAN_BIAS, VLLMAudioSource

A = 65536  # id of <audio_0>
PROMPT = [1, 4, 300, 301, 302, 303, 304, 305, 3, 4, A + 5]  # 11 ids: the rule is live from the start




def test_rule_counts_the_prompt_and_needs_a_full_window():
    assert banned_token([7] * 9) is None  # shorter than the window
    assert banned_token([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]) is None  # last id once: 10 %, not more
    assert banned_token([1, 2, 3, 4, 5, 6, 7, 8, 10, 10]) == 10
    assert banned_token([10, 2, 3, 4, 5, 6, 7, 8, 9, 10]) == 10
    assert banned_token([10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]) is None  # the first 10 left the window


def test_logits_processor_bans_only_the_repeating_last_id():
    torch = pytest.importorskip("torch")
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]])
    scores = RepetitionAwareLogitsProcessor()(ids, torch.zeros(2, 12))
    assert scores[0, 9] == float("-inf") and bool(torch.isfinite(scores[0, :9]).all())
    assert bool(torch.isfinite(scores[1]).all())


class FakeCompletions:
    """/v1/completions, streaming (SSE) and not. A deterministic 'model': in mode "repeat" the next
    id is the last id of the prompt + generated so far (so it repeats forever), in mode "count"
    it is the last id + 1 (no repeats). A logit_bias of -100 on the preferred id makes it pick
    last + 1 instead (unless ignore_bias). Ids go out as <audio_N> text cut into `piece`-char
    pieces (7: tokens split across events; 25: several tokens in one event)."""

    def __init__(self, mode: str, ignore_bias: bool = False, piece: int = 7) -> None:
        self.mode, self.ignore_bias, self.piece = mode, ignore_bias, piece
        self.requests: list[dict] = []
        self.disconnects = 0

    def _next(self, history: list[int], bias: dict) -> int:
        want = history[-1] if self.mode == "repeat" else history[-1] + 1
        if not self.ignore_bias and bias.get(str(want), 0) <= -100:
            want = history[-1] + 1
        return want

    def _generate(self, body: dict) -> list[int]:
        history, out = list(body["prompt"]), []
        for _ in range(body["max_tokens"]):
            out.append(self._next(history, body.get("logit_bias") or {}))
            history.append(out[-1])
        return out

    @staticmethod
    def _choice(text: str, finish=None) -> dict:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        text = "".join(f"<audio_{t - A}>" for t in self._generate(body))
        head = {"id": "c", "object": "text_completion", "created": 0, "model": body["model"]}
        if not body.get("stream"):
            return web.json_response({**head, "choices": [self._choice(text, "length")]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i in range(0, len(text), self.piece):
                event = {**head, "choices": [self._choice(text[i:i + self.piece])]}
                await resp.write(f"data: {json.dumps(event)}\n\n".encode())
                await asyncio.sleep(0.002)
            await resp.write(f"data: {json.dumps({**head, 'choices': [self._choice('', 'length')]})}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
        except ConnectionResetError:  # the client closed the stream
            self.disconnects += 1
        return resp


async def _serve(fake: FakeCompletions):
    app = web.Application()
    app.router.add_post("/v1/completions", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"


async def _run(fake: FakeCompletions, max_tokens: int, ras: bool = True):
    runner, url = await _serve(fake)
    source = VLLMAudioSource(url, "tts", max_tokens=max_tokens, ras=ras)
    try:
        return [c async for c in source.tokens(PROMPT)], source
    finally:
        await source.close()
        await runner.cleanup()


@pytest.mark.parametrize("piece", [7, 25])
async def test_repeats_are_rejected_and_redrawn_with_logit_bias(piece):
    fake = FakeCompletions("repeat", piece=piece)
    out, source = await _run(fake, max_tokens=12)
    assert len(out) == 12 and violations(PROMPT, out) == 0
    # The fake prefers repeating; the rule allows one repeat of a fresh id, then bans it.
    assert out == [A + 5, A + 6, A + 6, A + 7, A + 7, A + 8, A + 8, A + 9, A + 9, A + 10, A + 10, A + 11]
    assert source.restarts == 6
    streams = [r for r in fake.requests if r["stream"]]
    redraws = [r for r in fake.requests if not r["stream"]]
    assert len(streams) == 6 and len(redraws) == 6  # the 12th id was a redraw: nothing left to stream
    # A redraw is one token for prompt + generated-so-far, with the banned id biased away.
    assert redraws[0]["prompt"] == PROMPT + [A + 5] and redraws[0]["max_tokens"] == 1
    assert redraws[0]["logit_bias"] == {str(A + 5): BAN_BIAS}
    # Streaming resumes from the longer history and only asks for what is left.
    assert streams[1]["prompt"] == PROMPT + out[:2] and streams[1]["max_tokens"] == 10
    assert all(r["skip_special_tokens"] is False for r in fake.requests)


async def test_without_the_rule_the_fake_repeats():
    out, source = await _run(FakeCompletions("repeat"), max_tokens=8, ras=False)
    assert out == [A + 5] * 8 and violations(PROMPT, out) == 7 and source.restarts == 0


async def test_a_reply_without_repeats_streams_once():
    fake = FakeCompletions("count")
    out, source = await _run(fake, max_tokens=30)
    assert out == [A + 6 + i for i in range(30)]
    assert source.restarts == 0 and len(fake.requests) == 1


async def test_codes_are_audio_numbers():
    runner, url = await _serve(FakeCompletions("count"))
    source = VLLMAudioSource(url, "tts", max_tokens=3)
    try:
        assert [c async for c in source.codes(PROMPT)] == [6, 7, 8]
    finally:
        await source.close()
        await runner.cleanup()


async def test_a_bias_that_does_not_hold_is_an_error():
    with pytest.raises(RuntimeError, match="despite logit_bias"):
        await _run(FakeCompletions("repeat", ignore_bias=True), max_tokens=5)


async def test_closing_the_iterator_closes_the_http_stream():
    fake = FakeCompletions("count")
    runner, url = await _serve(fake)
    source = VLLMAudioSource(url, "tts", max_tokens=400)
    try:
        gen = source.tokens(PROMPT)
        assert await gen.__anext__() == A + 6
        await gen.aclose()
        for _ in range(200):
            if fake.disconnects:
                break
            await asyncio.sleep(0.02)
        assert fake.disconnects == 1 and len(fake.requests) == 1
    finally:
        await source.close()
        await runner.cleanup()


# ---- the real bundled llama.cpp server (llama-server + SmolLM2-135M) ------------------------

def _gguf() -> Path:
    from core import assets

    try:
        return assets.package_file(assets.ASSETS["smollm2-135m"].files[0].parts[0])
    except assets.AssetError as exc:
        pytest.skip(str(exc))


@pytest.mark.integration
async def test_rule_holds_against_the_real_llama_cpp_server(tmp_path):
    """Greedy decoding after "Hmm... ... ..." repeats " ..."; the same VLLMAudioSource, with the
    llama-server id channel (id prompts, one streamed event per token carrying its id), must never
    let a banned id through. logit_bias and token-id prompts go to llama-server's /v1/completions."""
    from decoder.step_audio.completion_ids import LlamaServerIds
    from llm.llama_server import LlamaServer
    from tests.test_llama_server import require_llama_server

    require_llama_server()
    server = LlamaServer(_gguf(), "smol", n_parallel=1, n_ctx=512, log_path=tmp_path / "llama.log")
    url = await server.start()
    plain = VLLMAudioSource(url, "smol", temperature=0.0, max_tokens=16, ras=False, ids=LlamaServerIds(url))
    ruled = VLLMAudioSource(url, "smol", temperature=0.0, max_tokens=16, ras=True, ids=LlamaServerIds(url))
    try:
        ids = ruled.ids
        prompt = await ids.tokenize("Hmm... ... ... ... ... ... ... ...")
        assert len(prompt) >= 10 and await ids.prompt(prompt) == prompt  # ids go as they are
        free = [t async for t in plain.tokens(prompt)]
        assert violations(prompt, free) >= 3, free  # greedy decoding really repeats here
        out = [t async for t in ruled.tokens(prompt)]
        assert len(out) == 16 and violations(prompt, out) == 0, out
        assert ruled.restarts >= 1
        # Greedy: the runs agree up to free's first violation, where the rule redrew.
        k = next(i for i in range(len(free)) if free[i] == banned_token(prompt + free[:i]))
        assert out[:k] == free[:k] and out[k] != free[k]
    finally:
        await plain.close()
        await ruled.close()
        await server.stop()
