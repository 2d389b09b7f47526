"""What one remote model call costs on its own (serialization + the hop to a Serve replica and back),
without the model: the ASR call with a turn's audio, the TTS stream with a sentence's pieces.

    step-realtime model-tier --config configs/ray.yaml &            # the model tier (a local Ray cluster)
    python -m bench.ray_overhead --config configs/ray.yaml [--calls 200] [--audio-s 3]

It prints, per call: the caller's CPU time (this process: serialization, Ray's client) and the wall
time (median, p95). Wall times include waiting for CPU on a busy box; measure them on a quiet one.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import numpy as np


def _summary(walls: list[float], cpu_s: float) -> dict:
    walls = sorted(walls)
    return {"calls": len(walls), "wall_ms_p50": round(1000 * statistics.median(walls), 2),
            "wall_ms_p95": round(1000 * walls[int(0.95 * (len(walls) - 1))], 2),
            "client_cpu_ms_per_call": round(1000 * cpu_s / len(walls), 2)}


async def measure(address: str, asr_app: str, tts_app: str, calls: int, audio_s: float) -> dict:
    from core import ray_serve

    ray_serve.connect(address)
    from ray import serve

    try:
        asr, tts = serve.get_app_handle(asr_app), serve.get_app_handle(tts_app).options(stream=True)
        audio = np.zeros(int(audio_s * 16_000), np.float32)  # what ray-whisper sends: float32 16 kHz
        results = {}
        for name, one in (
            ("asr_unary", lambda: asr.echo.remote(audio, "en")),
            ("tts_stream_1_sentence", lambda: tts.echo_stream.remote(1, 2 * 22_050)),  # ~2 s of 22 kHz audio
        ):
            async def run_one() -> None:
                response = one()
                if name.startswith("tts"):
                    async for _ in response:
                        pass
                else:
                    await response
            for _ in range(5):  # warm the route
                await run_one()
            walls, cpu0 = [], time.process_time()
            for _ in range(calls):
                t0 = time.perf_counter()
                await run_one()
                walls.append(time.perf_counter() - t0)
            results[name] = _summary(walls, time.process_time() - cpu0)
        return results
    finally:
        ray_serve.disconnect()


def main(argv: list[str] | None = None) -> int:
    from realtime.config import load_config

    parser = argparse.ArgumentParser(prog="python -m bench.ray_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/ray.yaml")
    parser.add_argument("--address", help="the Ray cluster (default: the config's)")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--audio-s", type=float, default=3.0, help="seconds of audio per ASR call")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    tok, dec = cfg.tokenizer.options(), cfg.decoder.options()
    address = args.address or tok.get("address") or dec.get("address") or "127.0.0.1:6390"
    result = asyncio.run(measure(address, tok.get("app", "asr"), dec.get("app", "tts"), args.calls, args.audio_s))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
