"""The end-of-turn policy's trade-off, measured on recorded-style speech (issue 11):
how long finished turns wait vs how many mid-turn pauses would be taken for the end.

    .venv/bin/python -m bench.turn_taking [--config configs/default.yaml] [--out docs/bench-results/turn-taking.json]
    .venv/bin/python -m bench.turn_taking --text   # also the words' P(end) (Whisper + the chat model)

Every utterance of the bench corpus (bench/corpus.py: multi-phrase turns with 250–500 ms pauses)
and of the 36-utterance paused corpus (bench/speculation.py) is run through the real VAD and the
controller's TurnDetector, frame by frame (not paced: the model's time is added as measured). At
each pause the end-of-turn model scores the turn so far, as the controller would ask it. Then,
per policy: a pause the speaker resumes after is "early" if its silence reached the policy's
wait (the turn would have ended mid-sentence: a reply before the user finished); the last pause
of each utterance gives the finished turn's wait. The fixed 650 ms wait is the baseline.

Transcript hints are left out (they arrive with the transcription, after most short waits).
With --text each pause is also transcribed (the configured tokenizer) and its words scored by the
chat model (llm/turn_end.py, the bundled llama.cpp server): p_text is known `text_at_ms` into the
silence (pause_ms + the measured ASR and scoring times), and a policy using it cannot act sooner.
"""
from __future__ import annotations

import argparse
import asyncio
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
from controller.turn_policy import EAGERNESS, TEXT_SURE, model_wait_ms, text_wait_ms
from controller.turns import FRAME_MS, TurnDetector
from core.stages import BuildEnv, build_stage
from llm.base import Message
from realtime.config import load_config

FRAME = 320
NEVER_MS = 60_000  # the simulation's detector never ends a turn itself: each policy is applied after


@dataclass
class Pause:
    probability: float
    silence_ms: int  # the longest silence this pause reached before speech resumed (or the tail)
    last: bool  # the utterance's final pause: the turn was finished here
    audio: np.ndarray | None = None  # the turn so far (kept only for --text)
    p_text: float | None = None
    text_at_ms: float = 0.0  # silence (ms) by which p_text is known
    transcript: str = ""


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
            current = Pause(p, det.silence_run_ms, last=False, audio=np.concatenate(turn))
            found.append(current)
        if signal is Signal.SPEECH and state is State.USER_PAUSED:
            current = None
        state = new or state
    if found and state is State.USER_PAUSED:
        found[-1].last = True
    return found, timings


async def score_text(pauses: list[Pause], tokenizer, llm, system_prompt: str, pause_ms: int) -> None:
    """Each pause's transcript and p_text, and when (ms of silence) the controller would have it."""
    history = [Message("system", system_prompt)]
    for pause in pauses:
        tokenizer.reset()
        for i in range(0, len(pause.audio) - FRAME + 1, FRAME):
            tokenizer.push(pause.audio[i:i + FRAME])
        t0 = time.perf_counter()
        heard = await tokenizer.finalize()
        pause.transcript = heard.text
        t1 = time.perf_counter()
        pause.p_text = await llm.turn_end_probability(history, heard.text, heard.language)
        pause.text_at_ms = pause_ms + (time.perf_counter() - t0) * 1000
        print(f"  p_audio {pause.probability:.2f} p_text {pause.p_text if pause.p_text is None else round(pause.p_text, 3)} "
              f"{'END' if pause.last else 'mid'} asr {1000 * (t1 - t0):.0f} ms + text {1000 * (time.perf_counter() - t1):.0f} ms: "
              f"{pause.transcript}", flush=True)


def with_text(ctrl: ControllerConfig, floor: float, sure: float = TEXT_SURE):
    """The wait of a pause under the audio model (as live) and then, from text_at_ms on, the text."""
    def wait_of(p: Pause) -> float:
        audio_wait = max(floor, model_wait_ms(ctrl, p.probability))
        if p.p_text is None or audio_wait <= p.text_at_ms:  # the turn ended before the words were scored
            return audio_wait
        return max(p.text_at_ms, text_wait_ms(ctrl, audio_wait, p.probability, p.p_text, sure))
    return wait_of


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
    ap.add_argument("--text", action="store_true", help="also score each pause's words with the chat model")
    args = ap.parse_args(argv)
    return asyncio.run(_main(args))


async def _main(args) -> int:
    cfg = load_config(args.config)
    env = BuildEnv(cache_dir=cfg.cache_path)
    vad = build_stage("vad", cfg.vad.impl, cfg.vad.options(), env).create()
    turn = cfg.turn if cfg.turn.impl != "none" else type(cfg.turn)(impl="smart-turn")
    model = build_stage("turn", turn.impl, turn.options(), env)
    ctrl = cfg.controller
    tokenizer = llm = None
    if args.text:
        tokenizer = build_stage("tokenizer", cfg.tokenizer.impl, cfg.tokenizer.options(), env).create()
        llm = build_stage("llm", cfg.llm.impl, cfg.llm.options(), env)
        await llm.start()
    corpora = {"bench": load_corpus(), "paused-36": load_corpus(spec=SPEC)}
    result: dict = {"config": args.config, "controller": ctrl.model_dump(), "corpora": {}}
    for name, corpus in corpora.items():
        pauses: list[Pause] = []
        timings: list[float] = []
        for conv in corpus:
            for utt in conv.turns:
                found, took = pauses_of(utt.pcm, vad, model, ctrl)
                if llm is not None:
                    await score_text(found, tokenizer, llm, cfg.context.system_prompt, ctrl.pause_ms)
                for pause in found:
                    pause.audio = None
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
        if llm is not None:
            for sure in (0.2, 0.25, 0.3, 0.5):
                rows.append({"policy": f"auto + text (p < 0.5 but p_text ≥ {sure} → 500 ms)",
                             **evaluate(pauses, with_text(ctrl, floor, sure))})
            for eagerness in EAGERNESS:
                c = ctrl.model_copy(update={"eagerness": eagerness})
                rows.append({"policy": f"eagerness {eagerness} + text", **evaluate(pauses, with_text(c, floor))})
        result["corpora"][name] = {
            "utterances": sum(len(c.turns) for c in corpus), "pauses": len(pauses),
            "model_ms_p50": round(latency, 1),
            "p_finished": [round(p.probability, 3) for p in pauses if p.last],
            "p_mid": [round(p.probability, 3) for p in pauses if not p.last],
            "pauses_scored": [{"p": round(p.probability, 3), "p_text": p.p_text, "text_at_ms": round(p.text_at_ms),
                               "silence_ms": p.silence_ms, "last": p.last, "transcript": p.transcript}
                              for p in pauses] if llm is not None else [],
            "rows": rows}
        print(f"\n## {name}: {result['corpora'][name]['utterances']} utterances, {len(pauses)} pauses, "
              f"model {latency:.0f} ms per pause (p50)\n")
        print("| policy | finished-turn wait p50 / p95 ms | early (mid-turn pauses taken as the end) |")
        print("|---|---|---|")
        for r in rows:
            print(f"| {r['policy']} | {r['finished_wait_p50_ms']:.0f} / {r['finished_wait_p95_ms']:.0f} | "
                  f"{r['early']} of {r['mid_pauses']} |")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False))
    if llm is not None:
        await llm.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
