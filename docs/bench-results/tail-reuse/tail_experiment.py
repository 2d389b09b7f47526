"""Experiment (2026-12-03): transcribe only the tail of a multi-phrase turn, after the transcript of
its first phrases (taken at the pause between them), instead of the whole turn again.

    PYTHONPATH=. .venv/bin/python docs/bench-results/tail-reuse/tail_experiment.py

Whisper base as configured in configs/default.yaml; phrases of bench/speculation.py TOPICS in three
voices, 300 ms between phrases. Prints each case (time whole / tail / tail with the prefix as
prompt | texts) and the WER and median time of each way. Result: docs/benchmarks.md.
"""
import time, statistics
import numpy as np
from pathlib import Path

from core.stages import BuildEnv
from realtime.config import load_config
from tests.speech_util import espeak, piper, silence, wer
from bench.speculation import TOPICS
from faster_whisper.transcribe import get_ctranslate2_storage

cfg = load_config(Path("configs/default.yaml"))
env = BuildEnv(cache_dir=Path(cfg.server.cache_dir).expanduser())
from streaming_tokenizer.whisper import build, pick_language
fac = build(cfg.tokenizer.options(), env)
eng = fac.engine
tok = eng._tokenizer
def run(audio, lang, prev=None):
    w = eng.window_of(len(audio))
    feats = eng._features(audio, w)[None]
    enc = eng.model.model.encode(get_ctranslate2_storage(np.ascontiguousarray(feats)))
    if lang is None:
        lang = pick_language(eng.model.model.detect_language(enc)[0], eng.candidates)
    prompt = [tok.sot, eng.language_token(lang), tok.transcribe, tok.no_timestamps]
    if prev:
        prompt = [tok.sot_prev] + tok.encode(" " + prev.strip())[-100:] + prompt
    r = eng.model.model.generate(enc, [prompt], beam_size=1, max_length=200, suppress_blank=True, suppress_tokens=eng._suppress)
    ids = [t for t in r[0].sequences_ids[0] if t < tok.eot]
    return tok.decode(ids).strip(), lang
voices = {"joe": piper, "us": lambda t: espeak(t, "en-us"), "f3": lambda t: espeak(t, "en+f3")}
rows = []
for vname, v in voices.items():
    for phrases in TOPICS:
        if len(phrases) < 2: continue
        aud = [v(p).astype(np.float32)/32768 for p in phrases]
        gap = silence(0.3).astype(np.float32)/32768
        parts = [silence(0.2).astype(np.float32)/32768]
        for a in aud: parts += [a, gap]
        whole = np.concatenate(parts)
        prefix = np.concatenate(parts[:-2] ); tail = np.concatenate(parts[-2:])
        ref = " ".join(phrases)
        t0=time.perf_counter(); wt, wl = run(whole, None); tw=time.perf_counter()-t0
        pt, pl = run(prefix, None)
        t0=time.perf_counter(); tt,_ = run(tail, pl); tt_s=time.perf_counter()-t0
        t0=time.perf_counter(); tp,_ = run(tail, pl, pt); tp_s=time.perf_counter()-t0
        rows.append((wer(ref, wt), wer(ref, pt+" "+tt), wer(ref, pt+" "+tp), tw, tt_s, tp_s, len(ref.split())))
        print(vname, f"{tw:.2f} {tt_s:.2f} {tp_s:.2f}", "|", wt, "|", pt, "+", tt, "|", tp, flush=True)
n = sum(r[6] for r in rows)
for i, name in enumerate(["whole", "tail", "tail+prompt"]):
    print(name, "WER", round(sum(r[i]*r[6] for r in rows)/n, 3), "time median", round(statistics.median(r[3+i] for r in rows), 3))
