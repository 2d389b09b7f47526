"""How much do semantic codes change with the streaming segment length?

Step-Audio's reference tokenizes an utterance in pieces of up to 30 s; the streaming tokenizer
cuts it into `semantic_segment_s` segments so most of the work is done while the user speaks.
This compares, for each segment length, the codes of the segmented run against the 30 s run
(position by position) and prints the share that differ. The linguistic stream is streamed by
construction (same chunks either way), so it is reported as a check, expected 0.

    python -m streaming_tokenizer.step_audio.measure --model-dir DIR a.wav b.wav [--segments 1 2 4 8]

WAV files: 16-bit PCM, any rate, mono or stereo.
"""
from __future__ import annotations

import argparse
import wave

import numpy as np
import soxr

WHOLE_S = 30.0


def read_wav(path: str) -> np.ndarray:
    with wave.open(path, "rb") as w:
        if w.getsampwidth() != 2:
            raise SystemExit(f"{path}: expected 16-bit PCM")
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).reshape(-1, w.getnchannels())
        rate = w.getframerate()
    x = pcm.astype(np.float32).mean(axis=1) / 32768.0
    return soxr.resample(x, rate, 16000).astype(np.float32) if rate != 16000 else x


def changed(a: list[int], b: list[int]) -> float:
    n = max(len(a), len(b))
    if n == 0:
        return 0.0
    same = sum(1 for x, y in zip(a, b) if x == y)
    return 1.0 - same / n


def measure(models, utterances: list[np.ndarray], segments_s: list[float]) -> dict[float, dict[str, float]]:
    from streaming_tokenizer.step_audio.interleave import interleave

    whole = [(models.linguistic.tokenize(x), models.semantic.tokenize(x, int(WHOLE_S * 16000))) for x in utterances]
    result = {}
    for seg in segments_s:
        sem_diff = tok_diff = ling_diff = 0.0
        for x, (ling_w, sem_w) in zip(utterances, whole):
            ling = models.linguistic.tokenize(x)
            sem = models.semantic.tokenize(x, int(seg * 16000))
            sem_diff += changed(sem, sem_w)
            ling_diff += changed(ling, ling_w)
            tok_diff += changed(interleave(ling, sem), interleave(ling_w, sem_w))
        k = len(utterances)
        result[seg] = {"semantic": sem_diff / k, "linguistic": ling_diff / k, "tokens": tok_diff / k}
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--segments", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    ap.add_argument("wavs", nargs="+")
    args = ap.parse_args(argv)
    from streaming_tokenizer.step_audio import Options, load_models

    models = load_models(Options(model_dir=args.model_dir, device=args.device, transcript="none"))
    utterances = [read_wav(p) for p in args.wavs]
    seconds = sum(len(x) for x in utterances) / 16000
    print(f"{len(utterances)} utterances, {seconds:.1f} s; share of codes that differ from {WHOLE_S:.0f} s pieces")
    print("segment_s  semantic  linguistic  interleaved")
    for seg, r in measure(models, utterances, args.segments).items():
        print(f"{seg:9.1f}  {r['semantic']:8.1%}  {r['linguistic']:10.1%}  {r['tokens']:11.1%}")


if __name__ == "__main__":
    main()
