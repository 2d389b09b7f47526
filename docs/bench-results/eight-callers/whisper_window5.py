"""WER and time of Whisper base with a 5 s vs 10 s minimum encoder window on 54 utterances
(bench_whisper's corpus + 6 more, three voices). Run from the repo root:
    PYTHONPATH=. .venv/bin/python docs/bench-results/eight-callers/whisper_window5.py 10 5
"""
import asyncio, os, time, sys
from pathlib import Path
import numpy as np
from core.stages import BuildEnv, build_stage
from streaming_tokenizer.bench_whisper import CORPUS, VOICES, _filled
from tests.speech_util import wer, piper, espeak
cache = Path(os.path.expanduser("~/.cache/step-realtime"))
EXTRA = ["What is the capital of France?", "Tell me a joke.", "How are you today?", "Thanks, goodbye.",
         "Can you recommend some music for studying?", "I think I lost my card yesterday. What should I do first?"]
async def main():
    audios = [(t, v(t)) for v in VOICES.values() for t in CORPUS + EXTRA]
    for w in [float(x) for x in sys.argv[1:]]:
        f = build_stage("tokenizer", "whisper", {"language": None, "languages": ["en", "zh"], "encoder_window_s": w}, BuildEnv(cache))
        e = f.engine
        await _filled(f, audios[0][1]).finalize()
        for rnd in range(2):
            errs = words = 0; times = []; bad = []
            for text, audio in audios:
                tok = _filled(f, audio)
                t0 = time.perf_counter(); r = await tok.finalize(); times.append(time.perf_counter() - t0)
                n = len(text.split()); x = wer(text, r.text); errs += x * n; words += n
                if x > 0.25: bad.append((text, r.text))
            print(f"window {w}: WER {errs/words:.3f}  median {np.median(times)*1000:.0f} ms  p90 {np.percentile(times,90)*1000:.0f}  loops {e.loop_retries} full {e.full_runs} solo {e.solo_encodes}")
        for b in bad: print("   ", b)
        await f.close()
asyncio.run(main())
