"""The end-of-turn policy's trade-off, measured on recorded-style speech (issue 11):
how long finished turns wait vs how many mid-turn pauses would be taken for the end.

    .venv/bin/python -m bench.turn_taking [--config configs/default.yaml] [--out docs/bench-results/turn-taking.json]

Every utterance of the bench corpus (bench/corpus.py: multi-phrase turns with 250–500 ms pauses)
and of the 36-utterance paused corpus (bench/speculation.py) is run through the real VAD and the
controller's TurnDetector, frame by frame (not paced: the model's time is added as measured). At
each pause the end-of-turn model scores the turn so far, as the controller would ask it. Then,
per policy: a pause the speaker resumes after is "early" if its silence reached the policy's
wait (the turn would have ended mid-sentence: a reply before the user finished); the last pause
of each utterance gives the finished turn's wait. The fixed 650 ms wait is the baseline.

Transcript hints are left out (they arrive with the transcription, after most short waits).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.corpus import load_corpus
from bench.speculation import SPEC
from controller.config import ControllerConfig
from controller.states import Signal, State, next_state
from controller.turn_policy import EAGERNESS, model_wait_ms
from controller.turns import FRAME_MS, TurnDetector
from core.stages import BuildEnv, build_stage
from realtime.config import load_config

FRAME = 320
NEVER_MS = 60_000  # the simulation's detector never ends a turn itself: each policy is applied after


@dataclass
class Pause:
    probability: float
    silence_ms: int  # the longest silence this pause reached before speech resumed (or the tail)
    last: bool  # the utterance's final pause: the turn was finished here


def pauses_of(pcm: np.ndarray, vad, model, cfg: ControllerConfig) -> tuple[list[Pause], list[float]]:
    """The pauses the controller would see in one utterance, each scored by the model."""
    sim = cfg.model_copy(update={"end_of_turn_ms": NEVER_MS - 1, "max_end_of_turn_ms": NEVER_MS})
    det, state = TurnDetector(sim), State.SILENCE
    audio = np.concatenate([np.zeros(8000, np.int16), pcm, np.zeros(32000, np.int16)])
    frames = [audio[i:i + FRAME] for i in range(0, len(audio) - FRAME + 1, FRAME)]
    preroll: list[np.ndarray] = []
    turn: list[np.ndarray] = []
    found: list[Pause] = []
    timings: list[float] = []
    current: Pause | None = None
    vad.reset()
    for i, frame in enumerate(frames):
        speech = vad.process(frame) >= cfg.speech_threshold
        signal = det.update(state, speech, (i + 1) * FRAME_MS)
        if state in (State.USER_SPEAKING, State.USER_PAUSED):
            turn.append(frame)
        else:
            preroll = (preroll + [frame])[-(cfg.preroll_ms + cfg.onset_ms) // FRAME_MS:]
        if current is not None:
            current.silence_ms = max(current.silence_ms, det.silence_run_ms)
        if signal is None:
            continue
        new = next_state(state, signal)
        if signal is Signal.SPEECH and state is State.SILENCE:
            turn = list(preroll)
        if signal is Signal.PAUSE:
            t0 = time.perf_counter()
            p = model.predict(np.concatenate(turn))
            timings.append((time.perf_counter() - t0) * 1000)
            current = Pause(p, det.silence_run_ms, last=False)
            found.append(current)
        if signal is Signal.SPEECH and state is State.USER_PAUSED:
            current = None
        state = new or state
    if found and state is State.USER_PAUSED:
        found[-1].last = True
    return found, timings


def evaluate(pauses: list[Pause], wait_of) -> dict:
    finished = [wait_of(p) for p in pauses if p.last]
    mid = [p for p in pauses if not p.last]
    early = sum(1 for p in mid if p.silence_ms >= wait_of(p))
    return {"finished_wait_p50_ms": statistics.median(finished),
            "finished_wait_p95_ms": float(np.percentile(finished, 95)),
            "early": early, "mid_pauses": len(mid), "finished_turns": len(finished)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    env = BuildEnv(cache_dir=cfg.cache_path)
    vad = build_stage("vad", cfg.vad.impl, cfg.vad.options(), env).create()
    turn = cfg.turn if cfg.turn.impl != "none" else type(cfg.turn)(impl="smart-turn")
    model = build_stage("turn", turn.impl, turn.options(), env)
    ctrl = cfg.controller
    corpora = {"bench": load_corpus(), "paused-36": load_corpus(spec=SPEC)}
    result: dict = {"config": args.config, "controller": ctrl.model_dump(), "corpora": {}}
    for name, corpus in corpora.items():
        pauses: list[Pause] = []
        timings: list[float] = []
        for conv in corpus:
            for utt in conv.turns:
                found, took = pauses_of(utt.pcm, vad, model, ctrl)
                pauses += found
                timings += took
        latency = statistics.median(timings)
        floor = ctrl.pause_ms + latency  # the model's answer cannot come sooner than this
        rows = [{"policy": f"fixed {ctrl.end_of_turn_ms} ms", **evaluate(pauses, lambda p: ctrl.end_of_turn_ms)}]
        for threshold in (0.5, 0.7, 0.9):
            for short in (250, 300, 400, 500):
                rows.append({"policy": f"model: p ≥ {threshold} → {short} ms",
                             **evaluate(pauses, lambda p, e=(threshold, short):
                                        max(floor, model_wait_ms(ctrl, p.probability, e)))})
        for eagerness in EAGERNESS:
            c = ctrl.model_copy(update={"eagerness": eagerness})
            rows.append({"policy": f"eagerness {eagerness} {EAGERNESS[eagerness]}",
                         **evaluate(pauses, lambda p, c=c: max(floor, model_wait_ms(c, p.probability)))})
        result["corpora"][name] = {
            "utterances": sum(len(c.turns) for c in corpus), "pauses": len(pauses),
            "model_ms_p50": round(latency, 1),
            "p_finished": [round(p.probability, 3) for p in pauses if p.last],
            "p_mid": [round(p.probability, 3) for p in pauses if not p.last],
            "rows": rows}
        print(f"\n## {name}: {result['corpora'][name]['utterances']} utterances, {len(pauses)} pauses, "
              f"model {latency:.0f} ms per pause (p50)\n")
        print("| policy | finished-turn wait p50 / p95 ms | early (mid-turn pauses taken as the end) |")
        print("|---|---|---|")
        for r in rows:
            print(f"| {r['policy']} | {r['finished_wait_p50_ms']:.0f} / {r['finished_wait_p95_ms']:.0f} | "
                  f"{r['early']} of {r['mid_pauses']} |")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
