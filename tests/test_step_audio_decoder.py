"""Streaming Step-Audio decoder: streamed vs one-shot audio, the Decoder interface (first chunk
after the first token chunk, text spans, cancellation), the vLLM code source and build()."""
from __future__ import annotations

import asyncio
import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from aiohttp import web  # noqa: E402

from decoder.step_audio.streaming import Prompt, ReplySynth, StreamConfig, synthesize_offline  # noqa: E402
from decoder.step_audio.tts_decoder import StepAudioDecoder, Voice  # noqa: E402
from decoder.step_audio.vllm_source import VLLMAudioSource, VLLMTokenizer  # noqa: E402

from tests.aio_util import serve_app  # noqa: E402
from tests.step_audio_fixtures import FIX, _one_torch_thread, models  # noqa: E402,F401 (fixtures)


SPF = 256  # samples per mel frame


@pytest.fixture(scope="module")
def prompt():
    r = np.load(FIX / "reference.npz")
    return Prompt(torch.from_numpy(r["prompt_token"]), torch.from_numpy(r["prompt_feat"]),
                  torch.from_numpy(r["embedding"]))


def _tokens(n: int, seed: int = 1) -> list[int]:
    return torch.randint(0, 512, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _stream(models, prompt, tokens, cfg, piece=5, seed=3):
    synth = ReplySynth(models.flow, models.hift, prompt, cfg, seed=seed)
    parts, steps = [], []  # steps: (tokens seen, reply mel frames emitted by the flow)
    for i in range(0, len(tokens), piece):
        synth.push(tokens[i:i + piece])
        while synth.ready():
            parts.append(synth.step())
            steps.append((len(synth.flow.tokens), synth.flow.emitted))
    parts.append(synth.step(final=True))
    steps.append((len(tokens), synth.flow.emitted))
    return torch.cat(parts), parts, steps


def test_streamed_reply_equals_one_shot_outside_seams(models, prompt):
    """Each region of a streamed reply equals the one-shot decode of the tokens known when it was
    emitted (the flow attends to the whole utterance, so this is what streaming can promise), and
    the last region equals the one-shot decode of the whole reply. Tolerance: 1e-4 absolute,
    outside windows of fade_frames + vocoder context/hold-back frames around each seam."""
    cfg = StreamConfig(max_context_tokens=None)
    tokens = _tokens(140)
    streamed, parts, steps = _stream(models, prompt, tokens, cfg)
    full = synthesize_offline(models.flow, models.hift, tokens, prompt, seed=3)
    assert streamed.shape == full.shape
    assert len(steps) >= 3 and parts[0].numel() > 0
    margin_before, margin_after = cfg.vocoder_context, cfg.fade_frames + cfg.vocoder_context
    start = 0
    for n_tok, end in steps:
        prefix = full if n_tok == len(tokens) else synthesize_offline(models.flow, models.hift, tokens[:n_tok],
                                                                      prompt, seed=3)
        lo = start + (margin_after if start else 0)
        hi = end - (margin_before if n_tok < len(tokens) else 0)
        if hi > lo:
            diff = (streamed[lo * SPF:hi * SPF] - prefix[lo * SPF:hi * SPF]).abs().max().item()
            assert diff < 1e-4, (n_tok, lo, hi, diff)
        start = end
    # ...and the seams are where the difference to the one-shot reply lives, not everywhere.
    last_start = steps[-2][1] + margin_after
    assert (streamed[last_start * SPF:] - full[last_start * SPF:]).abs().max().item() < 1e-4


def test_sliding_context_streams_the_whole_reply(models, prompt):
    tokens = _tokens(120, seed=2)
    cfg = StreamConfig(max_context_tokens=30, max_chunk_tokens=25)
    streamed, parts, _ = _stream(models, prompt, tokens, cfg, piece=7)
    full = synthesize_offline(models.flow, models.hift, tokens, prompt, seed=3)
    assert streamed.shape == full.shape and len(parts) >= 5
    assert bool(torch.isfinite(streamed).all())
    # Bounded context changes the audio, but it stays the same kind of signal.
    assert 0.5 < streamed.std().item() / full.std().item() < 2.0


def test_speed_resamples_mel_in_time(models, prompt):
    tokens = _tokens(50)
    normal, _, _ = _stream(models, prompt, tokens, StreamConfig())
    fast, _, _ = _stream(models, prompt, tokens, StreamConfig(speed=1.25))
    assert abs(len(fast) / len(normal) - 0.8) < 0.03


class FakeCodes:
    """Code source: `first` codes, then waits for `release` before the rest; records closing."""

    def __init__(self, codes, first=10):
        self.items, self.first = codes, first
        self.release = asyncio.Event()
        self.prompts, self.closed, self.sent = [], 0, 0

    async def codes_(self, prompt_ids):
        self.prompts.append(list(prompt_ids))
        try:
            for i, c in enumerate(self.items):
                if i == self.first:
                    await self.release.wait()
                self.sent += 1
                yield c
                await asyncio.sleep(0)
        finally:
            self.closed += 1

    def codes(self, prompt_ids):
        return self.codes_(prompt_ids)


async def fake_encode(text: str) -> list[int]:
    return [100 + (ord(ch) % 1000) for ch in text]


async def _text(*pieces):
    for p in pieces:
        yield p


async def test_first_audio_after_first_token_chunk_and_text_span(models):
    source = FakeCodes(_tokens(60), first=10)
    dec = StepAudioDecoder(Voice(models), source, fake_encode, seed=1)
    chunks = []
    async for chunk in dec.synthesize(_text("(高兴1)你好，", "今天天气很好。")):
        if not chunks:
            assert source.sent == 10  # only the first token chunk was available
            source.release.set()
        chunks.append(chunk)
    assert dec.sample_rate == 22050
    assert chunks[0].text == "(高兴1)你好，" and chunks[0].pcm.dtype == np.int16
    texts = [c.text for c in chunks if c.text]
    assert texts == ["(高兴1)你好，", "今天天气很好。"]
    assert source.prompts[0][:2] == [1, 4] and source.prompts[0][-1] != 3
    assert source.closed == 2
    total = sum(len(c.pcm) for c in chunks)
    assert total == 2 * models.flow.mel_frames(60) * SPF
    await dec.close()


async def test_cancel_mid_reply_closes_the_code_stream(models):
    source = FakeCodes(_tokens(200), first=10)
    dec = StepAudioDecoder(Voice(models), source, fake_encode, seed=1)
    gen = dec.synthesize(_text("一句很长的话。"))
    first = await gen.__anext__()
    assert first.text == "一句很长的话。"
    await gen.aclose()  # barge-in
    assert source.closed == 1 and source.sent == 10
    await dec.close()


async def _fake_vllm(aiohttp_pieces, seen):
    async def tokenize(request):
        body = await request.json()
        seen.setdefault("tokenize", []).append(body)
        return web.json_response({"tokens": [ord(c) for c in body["prompt"]], "count": len(body["prompt"])})

    async def completions(request):
        body = await request.json()
        seen["completions"] = body
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for piece in aiohttp_pieces:
                event = {"id": "c", "object": "text_completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}]}
                await resp.write(f"data: {json.dumps(event)}\n\n".encode())
                await asyncio.sleep(0.01)
            await resp.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            seen["disconnected"] = True
            raise
        return resp

    app = web.Application()
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/v1/completions", completions)
    runner, url = await serve_app(app)
    return runner, url + "/v1"


async def test_vllm_source_parses_audio_tokens_split_across_pieces():
    seen: dict = {}
    pieces = ["<audio_1", "2><audio_7>", "<aud", "io_4095>", "<|EOT|>"]
    runner, url = await _fake_vllm(pieces, seen)
    try:
        source = VLLMAudioSource(url, "tts", temperature=0.7)
        codes = [c async for c in source.codes([1, 4, 5])]
        assert codes == [12, 7, 4095]
        assert seen["completions"]["prompt"] == [1, 4, 5] and seen["completions"]["stream"] is True
        assert seen["completions"]["skip_special_tokens"] is False
        tok = VLLMTokenizer(url, "tts")
        assert await tok.encode("ab") == [97, 98]
        assert await tok.encode("ab") == [97, 98] and len(seen["tokenize"]) == 1  # cached
        assert seen["tokenize"][0]["add_special_tokens"] is False
        await tok.close()
        await source.close()
    finally:
        await runner.cleanup()


async def test_vllm_source_cancel_drops_the_connection():
    seen: dict = {}
    runner, url = await _fake_vllm([f"<audio_{i}>" for i in range(200)], seen)
    try:
        source = VLLMAudioSource(url, "tts")
        gen = source.codes([1])
        assert await gen.__anext__() == 0
        await gen.aclose()
        for _ in range(100):
            if seen.get("disconnected"):
                break
            await asyncio.sleep(0.02)
        assert seen.get("disconnected")
        await source.close()
    finally:
        await runner.cleanup()


def _write_wav(path: Path, seconds: float = 1.0, rate: int = 24000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.3 * np.sin(2 * np.pi * 200 * t) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


async def test_build_through_the_stage_registry(tmp_path):
    from core.stages import BuildEnv, build_stage

    (tmp_path / "Tingting.json").write_text(json.dumps({"prompt_text": "你好", "prompt_codes": [65536 + 5, 7]}))
    _write_wav(tmp_path / "Tingting_prompt.wav")
    dec = build_stage("decoder", "step-audio", {
        "model_dir": str(FIX / "model"), "speaker_dir": str(tmp_path), "speaker": "Tingting",
        "llm_base_url": "http://127.0.0.1:9/v1", "seed": 1}, BuildEnv(cache_dir=tmp_path))
    assert dec.sample_rate == 22050
    spk = dec.common.speakers["Tingting"]
    assert spk.prompt_codes == [65536 + 5, 65536 + 7]
    assert spk.flow_prompt.token.tolist() == [[5, 7]]
    assert spk.flow_prompt.mel.shape == (1, 86, 80)  # 1 s at 22.05 kHz, hop 256
    await dec.close()


def test_model_dir_may_be_the_tts_3b_root(tmp_path):
    from decoder.step_audio import Options
    from decoder.step_audio.factory import resolve_model_dirs

    shutil.copytree(FIX / "model", tmp_path / "CosyVoice-300M-25Hz")
    shutil.copytree(FIX / "model", tmp_path / "CosyVoice-300M-25Hz-Music")
    common, music = resolve_model_dirs(Options(model_dir=str(tmp_path)))
    assert common.endswith("CosyVoice-300M-25Hz") and music.endswith("CosyVoice-300M-25Hz-Music")
    assert resolve_model_dirs(Options(model_dir=str(FIX / "model"))) == (str(FIX / "model"), None)
    with pytest.raises(FileNotFoundError, match="cosyvoice.yaml"):
        resolve_model_dirs(Options(model_dir=str(tmp_path / "nope")))
