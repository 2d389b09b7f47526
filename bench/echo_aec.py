"""Server-side echo cancellation, measured: does the bot still barge in on its own echo?

For each echo path (delay × level, reverberant) a simulated phone caller (bench/echo_sim.py) takes
`--replies` turns over the telephony transport with the fake stages, its microphone hearing the
bot's reply back. With AEC off it counts the replies the echo cut; with AEC on, the same, plus
whether the caller's own interruptions (another voice, 0.8 s, over every other reply from the
first on) still stop the reply, how long that took, the echo return loss enhancement and the
canceller's CPU. A last row has no echo at all (a handset that cancels its own), both ways.
Simulated time: repeatable, and about 1.5 minutes on one core.

    python -m bench.echo_aec [--replies 20] [--delays 40,100,200] [--levels -6,-12,-20]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import numpy as np
from pywebrtc_audio import AudioProcessor

from bench.echo_sim import EchoPath, converse
from decoder.speech_like import speech_like
from realtime.echo import EchoCanceller


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


NO_ECHO_DB = -150  # the "no echo" row: far below μ-law's quietest step


def _detected(counts) -> str:
    latency = f", median {statistics.median(counts.barge_in_ms):.0f} ms" if counts.barge_in_ms else ""
    missed = f", missed on turns {counts.missed}" if counts.missed else ""
    return f"{counts.barge_ins}/{counts.interruptions}{latency}{missed}"


async def measure(delay_ms: int, level_db: int, replies: int) -> dict:
    path, interrupt = EchoPath(delay_ms, level_db), frozenset(range(0, replies, 2))
    # Without AEC and with an echo the bot keeps interrupting itself: no room for the caller's interruptions.
    off = await converse(False, path, replies, interrupt=interrupt if level_db <= NO_ECHO_DB else frozenset())
    on = await converse(True, path, replies, interrupt=interrupt)
    return {"off_false": off.false_barge_ins, "on_false": on.false_barge_ins, "on_echo_turns": on.echo_turns,
            "off_detected": _detected(off), "on_detected": _detected(on), "erle_db": on.erle_db,
            "cpu_ms": 1000 * on.cancel_cpu_s / max(1, on.cancel_blocks)}


def cpu_per_block(rate: int, silent: bool = False, raw: bool = False) -> float:
    """CPU ms per 10 ms block, 20 ms at a time: EchoCanceller on 5 s of speech over an echo path or,
    `silent`, on the 3 s of digital silence after 2 s of it (what a call is between replies);
    `raw`: AEC3 itself, without the canceller's dither."""
    now = [100.0]
    far = speech_like(5, rate, seed="cpu")
    if silent:
        far[2 * rate:] = 0
    near = np.convolve(far.astype(float), EchoPath(100, -6).impulse_response(rate))[:len(far)].astype(np.int16)
    if silent:
        near[2 * rate:] = 0
    ec, apm, step, spent = EchoCanceller(True, rate, clock=lambda: now[0]), None, rate // 50, 0.0
    if raw:
        apm = AudioProcessor(sample_rate=rate, echo_cancellation=True)
    measured = range(2 * rate if silent else 0, len(far), step)
    for i in range(0, len(far), step):
        ec.played(far[i:i + step], rate, now[0])
        now[0] += 0.02
        t0 = time.process_time()
        if apm is not None:
            apm.process(near[i:i + step], far[i:i + step])
        else:
            ec.cancel(near[i:i + step])
        if i in measured:
            spent += time.process_time() - t0
    return 1000 * spent / (len(measured) * 2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--replies", type=int, default=20)
    ap.add_argument("--delays", type=_ints, default=[40, 100, 200], help="echo delays, ms")
    ap.add_argument("--levels", type=_ints, default=[-6, -12, -20], help="echo levels, dB")
    args = ap.parse_args(argv)
    print(f"{args.replies} caller turns per run. Echo barge-ins: replies cut while the caller was silent.\n")
    print("| delay ms | echo dB | echo barge-ins, AEC off | echo barge-ins, on | echo-started turns, on "
          "| interruptions that stopped the reply, on | ERLE dB | AEC CPU ms / 10 ms |")
    print("|---:|---:|---:|---:|---:|---|---:|---:|")
    t0 = time.monotonic()
    for delay in args.delays:
        for level in args.levels:
            r = asyncio.run(measure(delay, level, args.replies))
            erle = "—" if r["erle_db"] is None else f"{r['erle_db']:.1f}"
            print(f"| {delay} | {level} | {r['off_false']} | {r['on_false']} | {r['on_echo_turns']} "
                  f"| {r['on_detected']} | {erle} | {r['cpu_ms']:.3f} |", flush=True)
    r = asyncio.run(measure(100, NO_ECHO_DB, args.replies))
    print(f"\nNo echo at all: interruptions that stopped the reply, AEC off {r['off_detected']}; "
          f"AEC on {r['on_detected']}.")
    print("\nAEC CPU per 10 ms block, ms: " + "; ".join(
        f"{rate} Hz speech {cpu_per_block(rate):.3f}, digital silence {cpu_per_block(rate, True):.3f} "
        f"(without the dither {cpu_per_block(rate, True, raw=True):.3f})" for rate in (8000, 16_000)))
    print(f"({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
