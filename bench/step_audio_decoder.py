"""Benchmark the Step-Audio streaming decoder (flow + HiFT) at the real CosyVoice-300M-25Hz sizes
with random weights, on this CPU: time to first audio chunk, real-time factor, peak memory, for 1
and N concurrent streams, plus a FLOP count from which a GPU figure is ESTIMATED (not measured).

    .venv/bin/python -m bench.step_audio_decoder [--reply-s 2] [--prompt-s 1] [--streams 1 4]

Defaults keep it to a few minutes on a 2-core CPU; docs/step-audio-decoder.md records the runs.

Audio tokens come pre-generated (the TTS-3B LLM is not part of this measurement).
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from decoder.step_audio import hparams
from decoder.step_audio.loader import build_models
from decoder.step_audio.streaming import Prompt, ReplySynth, StreamConfig

REAL_YAML = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "step_audio_tts" / "cosyvoice.real.yaml"
TOKEN_RATE = 25


def run_stream(flow, hift, prompt, tokens, cfg, seed, t0):
    """Feed tokens as fast as they are available (all at once, in chunk-sized pushes)."""
    synth = ReplySynth(flow, hift, prompt, cfg, seed=seed)
    first, samples, i = None, 0, 0
    while i < len(tokens):
        take = max(1, synth.flow.chunk - (len(synth.flow.tokens) - synth.flow.done_tokens))
        synth.push(tokens[i:i + take])
        i += take
        while synth.ready():
            wav = synth.step()
            if wav.numel() and first is None:
                first = time.perf_counter() - t0
            samples += wav.numel()
    samples += synth.step(final=True).numel()
    return first, samples, time.perf_counter() - t0


def flops(flow, hift, prompt, n_tokens, steps):
    tokens = torch.randint(0, 4096, (1, n_tokens))
    with FlopCounterMode(display=False) as fc:
        mel = flow.inference(tokens, prompt.token, prompt.mel, prompt.embedding, steps=steps)
    f_flow = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        hift.inference(mel)
    return f_flow, fc.get_total_flops(), mel.shape[-1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reply-s", type=float, default=2.0)
    ap.add_argument("--prompt-s", type=float, default=1.0)
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads per stream")
    ap.add_argument("--workers", type=int, default=4, help="concurrent synthesis threads (one per stream)")
    ap.add_argument("--gpu-tflops", type=float, default=30.0, help="assumed sustained bf16 TFLOP/s for the estimate")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    hp = hparams.parse(hparams.load_yaml(REAL_YAML))
    flow, hift = build_models(hp)
    n_params = {"flow": sum(p.numel() for p in flow.parameters()), "hift": sum(p.numel() for p in hift.parameters())}
    n_prompt = int(args.prompt_s * TOKEN_RATE)
    prompt = Prompt(torch.randint(0, 4096, (1, n_prompt)), torch.randn(1, flow.mel_frames(n_prompt), 80) - 5,
                    torch.randn(1, 192))
    tokens = torch.randint(0, 4096, (int(args.reply_s * TOKEN_RATE),)).tolist()
    cfg = StreamConfig()
    sr = hp.hift.sampling_rate
    results = {"params": n_params, "reply_s": args.reply_s, "prompt_s": args.prompt_s, "threads": args.threads,
               "workers": args.workers, "config": vars(cfg), "runs": []}

    f_flow, f_hift, frames = flops(flow, hift, prompt, len(tokens), cfg.steps)
    audio_s = frames * hift.upsample / sr
    results["gflop_per_audio_s_one_shot"] = {"flow": f_flow / 1e9 / audio_s, "hift": f_hift / 1e9 / audio_s}

    # One-shot component timings (per second of audio).
    t = time.perf_counter()
    mel = flow.inference(torch.tensor([tokens]), prompt.token, prompt.mel, prompt.embedding, steps=cfg.steps)
    t_flow = time.perf_counter() - t
    t = time.perf_counter()
    hift.inference(mel)
    t_hift = time.perf_counter() - t
    results["one_shot_rtf"] = {"flow": t_flow / audio_s, "hift": t_hift / audio_s}

    for n in args.streams:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=min(n, args.workers)) as pool:
            futures = [pool.submit(run_stream, flow, hift, prompt, tokens, cfg, s, t0) for s in range(n)]
            outs = [f.result() for f in futures]
        wall = time.perf_counter() - t0
        total_audio = sum(o[1] for o in outs) / sr
        results["runs"].append({
            "streams": n, "first_chunk_s": [round(o[0], 2) for o in outs], "wall_s": round(wall, 2),
            "audio_s_total": round(total_audio, 2), "rtf_aggregate": round(wall / total_audio, 2),
            "rtf_per_stream": round(wall / (total_audio / n), 2)})
        print(json.dumps(results["runs"][-1]), flush=True)

    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gflop_s = sum(results["gflop_per_audio_s_one_shot"].values())
    results["gpu_estimate"] = {
        "assumed_tflops": args.gpu_tflops,
        "compute_s_per_audio_s_one_shot": gflop_s / (args.gpu_tflops * 1e3),
        "note": "ESTIMATE from the FLOP count only (no launch overhead, no LLM); streaming re-runs the flow "
                "over its context, multiply by the streamed/one-shot ratio measured on CPU",
    }
    print(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
