"""How long finalize() takes, and what the short encoder window costs in accuracy.

    .venv/bin/python -m streaming_tokenizer.bench_whisper [--cache-dir DIR] [--runs 5] [--wer]
    .venv/bin/python -m streaming_tokenizer.bench_whisper --threads 1,2   # cpu_threads compared
    .venv/bin/python -m streaming_tokenizer.bench_whisper --encoder-threads 1,2   # the lone-turn encoder
    .venv/bin/python -m streaming_tokenizer.bench_whisper --models whisper-base,whisper-tiny-en --wer

Speech is synthesized offline (piper joe voice, espeak-ng en-us and en+f3), so the numbers are
reproducible; results go to docs/models.md by hand.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path

import numpy as np

from core.stages import BuildEnv, build_stage
from tests.speech_util import espeak, frames, piper, silence, wer

UTTERANCES = {  # ~2 s and ~5 s in the joe voice
    "2s": "Please turn on the kitchen lights now.",
    "5s": "Could you tell me what the weather will be like in Paris tomorrow morning, "
          "and whether I should bring an umbrella or a warm coat?",
}
CORPUS = [
    "Please turn on the kitchen lights.",
    "What time does the train to Boston leave tomorrow?",
    "I would like to order a large pizza with mushrooms and olives.",
    "Remind me to call my sister at six o'clock this evening.",
    "How many kilometers is it from here to the nearest hospital?",
    "Tell me a short story about a dragon who was afraid of the dark.",
    "Yes.",
    "No thanks, that's all for now.",
    "Can you explain why the sky looks blue during the day but red at sunset?",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "My phone number is not something I want to share with strangers.",
    "Set a timer for twenty minutes, please.",
]
VOICES = {"piper-joe": piper, "espeak-en-us": lambda t: espeak(t, "en-us"),
          "espeak-en+f3": lambda t: espeak(t, "en+f3")}


def _filled(factory, audio: np.ndarray):
    tok = factory.create()
    for f in frames(np.concatenate([silence(0.3), audio, silence(0.3)])):
        tok.push(f)
    return tok


async def latency(factory, runs: int) -> None:
    for label, text in UTTERANCES.items():
        audio = piper(text)
        walls, cpus = [], []
        for _ in range(runs):
            tok = _filled(factory, audio)
            t0, c0 = time.perf_counter(), time.process_time()
            result = await tok.finalize()
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        t0 = time.perf_counter()
        await tok.finalize()  # no new audio: served from the cache
        cached_ms = (time.perf_counter() - t0) * 1000
        print(f"  {label} ({len(audio) / 16000:.1f} s speech): finalize median {statistics.median(walls):.2f} s "
              f"(min {min(walls):.2f}), CPU {statistics.median(cpus):.2f} s; again without new audio "
              f"{cached_ms:.3f} ms; {result.text!r}")


async def accuracy(factory) -> tuple[float, float]:
    errors = words = 0.0
    t0 = time.perf_counter()
    for voice in VOICES.values():
        for text in CORPUS:
            result = await _filled(factory, voice(text)).finalize()
            n = len(text.split())
            errors += wer(text, result.text) * n
            words += n
    return errors / words, time.perf_counter() - t0


def encoder_times(engine, runs: int = 3) -> None:
    """Whisper's encoder alone, by window length: the part of finalize() a short window saves;
    on cpu_threads and on the lone-turn copy (encoder_threads)."""
    from faster_whisper.transcribe import get_ctranslate2_storage

    encoders = [("cpu_threads", engine.model.model), ("encoder_threads", engine.solo_encoder)]
    for frames_ in (500, 1000, 2000, 3000):
        features = np.zeros((1, 80, frames_), np.float32)
        times = []
        for _, encoder in encoders:
            t0 = time.perf_counter()
            for _ in range(runs if encoder is not None else 0):
                encoder.encode(get_ctranslate2_storage(features))
            times.append(f"{(time.perf_counter() - t0) / runs:.2f} s" if encoder is not None else "off")
        print(f"  encoder alone, {frames_ // 100} s window: " + ", ".join(
            f"{name} {t}" for (name, _), t in zip(encoders, times)))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default="~/.cache/step-realtime")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--wer", action="store_true", help="also compare WER on a 36-utterance corpus")
    parser.add_argument("--threads", help="only compare these cpu_threads values (e.g. 1,2), default window")
    parser.add_argument("--encoder-threads", help="only compare these encoder_threads values (e.g. 1,2): the "
                                                  "encoder of a lone transcription (here every one is alone)")
    parser.add_argument("--models", help="only compare these models (asset names or CTranslate2 dirs), "
                                         "language en, default window")
    args = parser.parse_args()
    env = BuildEnv(Path(args.cache_dir).expanduser())
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    variants = []
    if args.threads:  # the two-thread encoder off, so that only cpu_threads differs
        variants = [{"cpu_threads": int(t), "encoder_threads": 1} for t in args.threads.split(",")]
    elif args.encoder_threads:
        variants = [{"encoder_threads": int(t)} for t in args.encoder_threads.split(",")]
    elif args.models:
        variants = [{"model": m, "language": "en", "languages": None} for m in args.models.split(",")]
    if variants:
        for round_ in range(2):  # twice, interleaved: the second round shows the noise
            for options in variants:
                factory = build_stage("tokenizer", "whisper", options, env)
                language = options.get("language")
                print(f"{options}, " + (f"language {language}:" if language else "language detected:"))
                await latency(factory, args.runs)
                if args.models and args.wer and round_ == 0:
                    err, secs = await accuracy(factory)
                    print(f"  WER {err:.3f} on {len(CORPUS) * len(VOICES)} utterances in {secs:.1f} s")
                await factory.close()
        return
    for name, options in [("short window (default)", {}), ("full 30 s window", {"encoder_window_s": None})]:
        for language in ("en", None):
            factory = build_stage("tokenizer", "whisper", {**options, "language": language}, env)
            print(f"{name}, language={language}:")
            await latency(factory, args.runs)
            if language == "en" and not options:
                encoder_times(factory.engine)
            if language == "en" and args.wer:
                err, secs = await accuracy(factory)
                eng = factory.engine
                print(f"  WER {err:.3f} on {len(CORPUS) * len(VOICES)} utterances in {secs:.1f} s "
                      f"(short-window runs {eng.window_runs}, full-window runs {eng.full_runs})")
            await factory.close()


if __name__ == "__main__":
    asyncio.run(main())
