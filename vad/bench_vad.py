"""CPU cost of the Silero VAD per session, with and without the webrtcvad gate.

    .venv/bin/python -m vad.bench_vad [--seconds 30]

CPU time (process_time) per second of audio, for silence, noise and speech; plus the frames on
which gated and ungated runs disagree (speech probability > 0.5), to show the gate is free.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from core.stages import BuildEnv, build_stage
from tests.speech_util import SR, espeak, frames, noise, piper, silence

SENTENCES = ["Could you tell me what the weather will be like in Paris tomorrow morning?",
             "I would like to order a large pizza with mushrooms and olives, please."]


def _brown_noise(seconds: float, dbfs: float) -> np.ndarray:
    rng = np.random.default_rng(1)
    x = np.cumsum(rng.normal(0, 1, int(seconds * SR)))
    x -= np.convolve(x, np.ones(400) / 400, "same")  # remove the drift, keep the low rumble
    return (x / x.std() * 10 ** (dbfs / 20) * 32768).astype(np.int16)


def _speech(seconds: float) -> np.ndarray:
    talk = np.concatenate([piper(SENTENCES[0]), silence(0.3), espeak(SENTENCES[1]), silence(0.5)])
    return np.tile(talk, int(seconds * SR / len(talk)) + 1)[: int(seconds * SR)]


def run(vad_options: dict, audio: np.ndarray, model: str) -> tuple[float, int, np.ndarray]:
    factory = build_stage("vad", "silero", {"model": model, **vad_options}, BuildEnv(Path("/tmp")))
    vad = factory.create()
    chunks = frames(audio)
    t0 = time.process_time()
    probs = np.array([vad.process(f) for f in chunks])
    return (time.process_time() - t0) / (len(audio) / SR), factory.model.calls, probs


def main() -> None:
    from core import assets

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    model = str(assets.package_file(assets.ASSETS["silero-vad"].files[0].parts[0]))
    s = args.seconds
    cases = {"digital silence": silence(s), "white noise -50 dBFS": noise(s, -50),
             "white noise -40 dBFS": noise(s, -40), "brown noise -45 dBFS": _brown_noise(s, -45),
             "speech (piper + espeak, with pauses)": _speech(s)}
    for name, audio in cases.items():
        cpu_off, calls_off, p_off = run({"gate_aggressiveness": None}, audio, model)
        cpu_on, calls_on, p_on = run({}, audio, model)
        differ = np.mean((p_off > 0.5) != (p_on > 0.5))
        print(f"{name:38s} ungated {cpu_off * 1000:5.2f} ms CPU/s ({calls_off} Silero calls)  "
              f"gated {cpu_on * 1000:5.2f} ms CPU/s ({calls_on} calls)  "
              f"speech frames {np.mean(p_off > 0.5):.2f}/{np.mean(p_on > 0.5):.2f}, differ {differ:.3f}")


if __name__ == "__main__":
    main()
