"""Measure the piper decoder: load time, time to first audio for a short clause, real-time factor.

    python -m decoder.bench_tts [--repeats 5]

Numbers go to docs/tts.md; they are wall-clock on whatever machine runs this.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from decoder.piper_tts import Options, PiperDecoder
from decoder.espeak import EspeakDecoder

CLAUSE = "It is sunny and warm today."  # 6 words
MANDARIN = "今天天气很好。"
PARAGRAPH = ("The weather today is sunny with a light breeze from the west. Temperatures will reach about "
             "twenty degrees this afternoon. Tonight it gets cooler, so bring a jacket if you go out.")


async def _one_piece(text: str):
    yield text


async def _first_audio_s(dec: PiperDecoder, text: str) -> float:
    t0 = time.perf_counter()
    synth = dec.synthesize(_one_piece(text))
    await synth.__anext__()
    elapsed = time.perf_counter() - t0
    await synth.aclose()
    return elapsed


async def main(repeats: int) -> None:
    from core import assets

    model = assets.package_file(assets.ASSETS["piper-joe"].files[0].parts[0])
    t0 = time.perf_counter()
    dec = PiperDecoder(model, Options(), EspeakDecoder())
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    await dec.start()
    warm_s = time.perf_counter() - t0
    first = [await _first_audio_s(dec, CLAUSE) for _ in range(repeats)]
    first_zh = [await _first_audio_s(dec, MANDARIN) for _ in range(repeats)]
    rtfs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        samples = sum([len(c.pcm) async for c in dec.synthesize(_one_piece(PARAGRAPH))])
        rtfs.append((time.perf_counter() - t0) / (samples / dec.sample_rate))
    await dec.close()
    print(f"voice load: {load_s:.2f} s, warm-up: {warm_s:.2f} s")
    print(f"first audio, 6-word clause ({CLAUSE!r}): median {statistics.median(first) * 1000:.0f} ms "
          f"(min {min(first) * 1000:.0f}, max {max(first) * 1000:.0f}) over {repeats}")
    print(f"first audio, Mandarin clause via espeak-ng: median {statistics.median(first_zh) * 1000:.0f} ms")
    print(f"real-time factor, {len(PARAGRAPH.split())}-word paragraph ({samples / dec.sample_rate:.1f} s audio): "
          f"median {statistics.median(rtfs):.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    asyncio.run(main(parser.parse_args().repeats))
