"""The controller's own figures on a corpus of generated multi-phrase utterances (issue 3):
commit rate, latency saved per committed reply, barge-in detection and stop time, and the
context's compression ratio.

    .venv/bin/python -m bench.speculation [--config configs/default.yaml] [--sweep]

The real stages run in-process (no transport: transport delays are bench.run's business). The
caller is paced in real time, 20 ms a frame; the reply "plays" on a wall-clock output. --sweep
adds a fast pass (real VAD, fake LLM/TTS, not paced) per pause threshold to show how the
thresholds move the commit rate.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import numpy as np

from bench.corpus import load_corpus
from context.history import Context
from controller import events as ev
from controller.config import ControllerConfig
from controller.controller import Controller, Stages
from controller.metrics import SpeculationStats
from realtime.config import load_config
from realtime.outputs import WebSocketAudioOutput
from core.stages import BuildEnv, build_all, close_all, start_all

FRAME = 320
VOICES = ["joe", "joe-fast", "joe-slow", "espeak-us-f", "espeak-rp-fast", "joe"]
TOPICS = [
    ["I need a new laptop for work.", "Something light,", "with a long battery life."],
    ["What is a good name for a cat?", "She is black and white."],
    ["Tell me a fun fact.", "Something about space, please."],
    ["I am going to Paris next week.", "What should I see first?"],
    ["My phone is very slow.", "It is two years old.", "Should I buy a new one?"],
    ["How do I boil an egg?", "I like it soft."],
    ["Can you help me with my homework?", "It is about fractions."],
    ["What time is sunrise in summer?"],
    ["I feel tired today.", "Any tips to stay awake?"],
    ["Recommend a book,", "maybe a short novel."],
    ["How many legs does a spider have?"],
    ["I want to learn to play guitar.", "Where should I start?"],
]
# Each conversation: three turns; the second barges in on the first reply.
SPEC = [
    (f"c{i}", "en", VOICES[i % len(VOICES)], [
        TOPICS[i],
        ["!Wait,", "make it shorter please."],
        TOPICS[(i + 5) % len(TOPICS)],
    ])
    for i in range(12)
]


def frames_of(pcm: np.ndarray) -> list[np.ndarray]:
    n = len(pcm) // FRAME
    return [pcm[i * FRAME:(i + 1) * FRAME] for i in range(n)]


class Caller:
    """Feeds one controller in real time and keeps what happened."""

    def __init__(self, ctrl: Controller, paced: bool) -> None:
        self.ctrl, self.paced = ctrl, paced
        self.t0 = time.monotonic()
        self.n = 0

    async def feed(self, frames: list[np.ndarray]) -> None:
        for frame in frames:
            if self.paced:
                due = self.t0 + self.n * 0.02
                if due > time.monotonic():
                    await asyncio.sleep(due - time.monotonic())
            else:
                await asyncio.sleep(0)
            self.ctrl.push_audio(frame)
            self.n += 1

    async def silence_until(self, done, limit_s: float) -> None:
        quiet = np.zeros(FRAME, np.int16)
        for _ in range(int(limit_s / 0.02)):
            if done():
                return
            await self.feed([quiet])


async def run_conversation(conv, stages: dict, cfg, stats: SpeculationStats, paced: bool) -> dict:
    events: list = []
    out = WebSocketAudioOutput(lambda e: None)
    ctx = Context(cfg.context.system_prompt, cfg.context.max_prompt_tokens)
    ctrl = Controller(Stages(stages["vad"].create(), stages["tokenizer"].create(), stages["llm"],
                             stages["decoder"], stages.get("turn")), ctx, out, lambda e: events.append((time.monotonic(), e)),
                      cfg.controller, SpeculationStats(parent=stats))
    caller = Caller(ctrl, paced)
    barge: list[dict] = []
    try:
        for i, utt in enumerate(conv.turns):
            if utt.barge_in:  # talk over the reply once it has played for a moment
                await caller.silence_until(lambda: out.played_seconds() > 0.6, 20)
                start_ms = ctrl.t_ms
                await caller.feed(frames_of(utt.pcm))
                hit = [(t, e) for t, e in events if isinstance(e, ev.StateChanged) and e.reason == "barge_in"
                       and e.t_ms >= start_ms]
                if hit:
                    t_sig, sig = hit[0]
                    barge.append({"detect_ms": sig.t_ms - start_ms - utt.speech_start_s * 1000,
                                  "stop_ms": (out_cleared_at(events, t_sig) - t_sig) * 1000})
            else:
                await caller.feed(frames_of(utt.pcm))
            if not (i + 1 < len(conv.turns) and conv.turns[i + 1].barge_in):
                await caller.silence_until(lambda: ctrl.state.value == "silence", 25)
    finally:
        await ctrl.close()
    return {"events": [e for _, e in events], "barge": barge, "context": ctx}




def out_cleared_at(events, t_sig: float) -> float:
    """The controller clears the output inside the barge-in transition, before it emits the
    cancelled ResponseDone: that event's time bounds when the caller's audio stopped."""
    for t, e in events:
        if t >= t_sig and isinstance(e, ev.ResponseDone) and e.reason == "barge_in":
            return t
    return t_sig


def summarize(results: list[dict], stats: SpeculationStats) -> dict:
    metrics = [e for r in results for e in r["events"] if isinstance(e, ev.TurnMetrics)]
    saved = [m.values["saved_ms"] for m in metrics if m.values.get("saved_ms") is not None]
    eot = [m.values["eot_to_first_audio_ms"] for m in metrics if m.values.get("eot_to_first_audio_ms") is not None]
    barge = [b for r in results for b in r["barge"]]
    audio_tokens = text_tokens = 0.0
    from context.history import AUDIO_TOKENS_PER_SECOND, count_text_tokens
    for r in results:
        for turn in r["context"].turns:
            audio_tokens += turn.speech_seconds * AUDIO_TOKENS_PER_SECOND
            text_tokens += count_text_tokens(turn.text)
    med = lambda xs: round(statistics.median(xs), 1) if xs else None  # noqa: E731
    return {
        "speculation": stats.as_dict(),
        "replies": len(metrics),
        "committed_replies": sum(m.speculative for m in metrics),
        "saved_ms_median": med(saved),
        "eot_to_first_audio_ms_median": med(eot),
        "stage_ms_median": {k: med([m.values[k] for m in metrics if m.values.get(k) is not None])
                            for k in ("end_of_turn_delay_ms", "asr_ms", "llm_ttft_ms", "tts_first_audio_ms")},
        "barge_ins": len(barge),
        "barge_detect_ms_median": med([b["detect_ms"] for b in barge]),
        "barge_stop_ms_max": round(max(b["stop_ms"] for b in barge), 2) if barge else None,
        "compression_ratio": round(audio_tokens / text_tokens, 2) if text_tokens else None,
    }


async def sweep(corpus, cfg, pauses: list[int]) -> list[dict]:
    """Commit rate per pause threshold: real VAD, fake tokenizer/LLM/decoder, not paced."""
    from decoder.fake import FakeDecoder
    from llm.fake import FakeLLM
    from streaming_tokenizer.fake import FakeTokenizerFactory
    env = BuildEnv(cache_dir=cfg.cache_path)
    from core.stages import build_stage
    vad = build_stage("vad", cfg.vad.impl, cfg.vad.options(), env)
    rows = []
    for pause_ms in pauses:
        c = cfg.model_copy(deep=True)
        c.controller = ControllerConfig(**{**cfg.controller.model_dump(), "pause_ms": pause_ms})
        stages = {"vad": vad, "tokenizer": FakeTokenizerFactory(),
                  "llm": FakeLLM(token_delay_s=0.001), "decoder": FakeDecoder()}
        stats = SpeculationStats()
        for conv in corpus:
            await run_conversation(conv, stages, c, stats, paced=False)
        rows.append({"pause_ms": pause_ms, **stats.as_dict()})
    return rows


async def main_async(args) -> dict:
    cfg = load_config(args.config)
    corpus = load_corpus(spec=SPEC)
    n_utts = sum(len(c.turns) for c in corpus)
    print(f"corpus: {len(corpus)} conversations, {n_utts} utterances")
    result: dict = {"utterances": n_utts}
    if args.sweep:
        result["sweep"] = await sweep(corpus, cfg, [int(p) for p in args.pauses.split(",")])
        print(json.dumps(result["sweep"], indent=1))
        if args.sweep_only:
            return result
    env = BuildEnv(cache_dir=cfg.cache_path)
    stages = build_all(cfg, env)
    await start_all(stages)
    try:
        stats = SpeculationStats()
        results = []
        for i, conv in enumerate(corpus[: args.limit or None]):
            results.append(await run_conversation(conv, stages, cfg, stats, paced=True))
            print(f"[{i + 1}/{len(corpus)}] {stats.as_dict()}", flush=True)
        result.update(summarize(results, stats))
    finally:
        await close_all(stages)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench.speculation", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--sweep", action="store_true", help="also sweep the pause threshold (fast)")
    ap.add_argument("--pauses", default="60,80,100,120,200,300,400", help="pause thresholds of the sweep (ms)")
    ap.add_argument("--sweep-only", action="store_true", help="skip the paced run with the real stages")
    ap.add_argument("--limit", type=int, default=0, help="only the first N conversations")
    ap.add_argument("--out", default="bench/out/speculation.json")
    args = ap.parse_args(argv)
    result = asyncio.run(main_async(args))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
