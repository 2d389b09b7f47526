"""How late each end-of-speech rule says "silence" after the true end of speech (the corpus's last
voiced 5 ms window), and how many 40 ms silence runs it finds inside turns. Silero alone is the
earliest (p50 ~90 ms); webrtcvad is later. Run from the repo root:
    PYTHONPATH=. .venv/bin/python docs/bench-results/eight-callers/vad_end_lag.py
"""
import numpy as np, os, webrtcvad
from pathlib import Path
from bench.corpus import load_corpus
from core.stages import BuildEnv, build_stage
cache = Path(os.path.expanduser("~/.cache/step-realtime"))
fac = build_stage("vad", "silero", {"gate_aggressiveness": None}, BuildEnv(cache))
convs = load_corpus(log=lambda *a: None)
def rules(p, w2, w3):
    return {"silero<0.5": p < 0.5, "silero<0.8": p < 0.8, "webrtc2": not w2, "webrtc3": not w3,
            "silero<0.8&webrtc2": p < 0.8 and not w2, "silero<0.9&webrtc3": p < 0.9 and not w3,
            "silero<0.5|(silero<0.8&webrtc3)": p < 0.5 or (p < 0.8 and not w3)}
lag = {}; dips = {}
for c in convs:
    for u in c.turns:
        pcm = np.concatenate([u.pcm, np.zeros(16000, np.int16)])
        vad = fac.create(); v2 = webrtcvad.Vad(2); v3 = webrtcvad.Vad(3)
        for f in range(15): vad.process(np.zeros(320, np.int16))
        sil = []
        for i in range(0, len(pcm) - 319, 320):
            fr = pcm[i:i+320]; b = fr.astype('<i2').tobytes()
            sil.append(rules(vad.process(fr), v2.is_speech(b, 16000), v3.is_speech(b, 16000)))
        for name in sil[0]:
            s = [x[name] for x in sil]
            t_end = [(k + 1) * 0.02 for k in range(len(s))]
            # lag: first silent frame after the true end that starts a run of >= 3 silent frames
            first = next((t_end[k] for k in range(len(s) - 3) if t_end[k] > u.speech_end_s and all(s[k:k+3])), None)
            lag.setdefault(name, []).append((first - u.speech_end_s) * 1000 if first else 999)
            # silence runs >= 40 ms before the true end, after the first speech frame
            run = 0; started = False; n = 0
            for k, x in enumerate(s):
                if t_end[k] > u.speech_end_s: break
                if not x:
                    if started and run >= 2: n += 1
                    run = 0; started = True
                else: run += 1
            dips[name] = dips.get(name, 0) + n
for name in lag:
    v = np.array(lag[name]); print(f"{name:32} lag p50 {np.median(v):4.0f} p90 {np.percentile(v,90):4.0f} max {v.max():4.0f}  mid-turn runs>=40ms {dips[name]}")
