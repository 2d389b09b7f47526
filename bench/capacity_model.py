"""How many boxes and GPUs N concurrent calls need: a queueing model fed by measured per-call costs.

`python -m bench.capacity_model [--calls 100,1000] [--turns-per-min 4] [--json]`

Two tiers, sized independently (docs/deploy.md):

* **Media workers** (CPU): every call costs CPU for as long as it lasts (transport, codec, VAD,
  the end-of-turn model, the controller). Workers are sized by cores: calls × cores per call /
  (cores per box × target utilization), the same arithmetic admission uses (core/load.py).
* **Model tier** (GPU): each turn holds a slot of a model replica for a service time (an LLM
  sequence slot while it prefills and decodes; a TTS stream while it produces the reply's audio).
  Turns arrive at λ = calls × turns per minute / 60. A stage with c slots is an M/M/c queue: the
  probability a turn waits at all is Erlang C, and P(wait > t) = C · e^(−(cμ − λ)t). The stage gets
  the fewest slots whose p95 wait fits its share of the latency budget, then whole replicas.

Exponential service times are the pessimistic textbook case; `simulate_wait` (a discrete-event
simulation, M/M/c or M/D/c) checks the formula and shows how much the deterministic case is better.

Every figure below says where it comes from. MEASURED ones are from docs/benchmarks.md on the
2-core box; ESTIMATE ones (no GPU here) from docs/step-audio*.md or stated assumptions: change them
with the options, or edit the profile, when a GPU run measures them.
"""
from __future__ import annotations

import argparse
import heapq
import json
import math
import random
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Stage:
    name: str
    service_s: float  # seconds one slot is held per turn
    slots_per_replica: int  # turns one replica serves at once (sequence slots, streams)
    gpus_per_replica: int
    wait_budget_s: float  # this stage's share of the latency budget for queueing (p95)
    source: str


@dataclass(frozen=True)
class Profile:
    turns_per_min: float  # per call in progress
    media_cores_per_call: float
    cores_per_box: int
    target_utilization: float
    stages: tuple[Stage, ...]
    sources: dict = field(default_factory=dict)


# -- the figures ---------------------------------------------------------------------------------

# MEASURED (docs/benchmarks.md, "After the capacity work", 4 WebRTC callers for 5 min): 79 turns
# from 4 callers in 5 min ≈ 4 turns per minute per call (the bench's callers talk continuously: a
# busy real call), and 0.34 cores per call in progress for the whole embedded stack.
TURNS_PER_MIN = 4.0
EMBEDDED_CORES_PER_CALL = 0.34
# MEASURED model CPU per turn on the embedded stack (same page): Whisper ≈ 0.35 s of both cores per
# transcription × 1.66 transcriptions per turn (306 for 184 turns); Smart Turn ≈ 70 ms a pause,
# ~2 pauses a turn; the LLM's first token ≈ 200 ms + ~25 tokens × 18 ms on one thread; piper's
# reply ≈ 0.5 s (first clause 220 ms). What is left of 0.34 is the media plane's own cost.
EMBEDDED_MODEL_CORE_S_PER_TURN = {"asr": 0.35 * 2 * 1.66, "llm": 0.2 + 25 * 0.018, "tts": 0.5}
SMART_TURN_CORE_S_PER_TURN = 0.07 * 2  # stays on the media worker with a remote model tier
# MEASURED: 64 WebSocket sessions with fake stages in 23 % of one core (media plane only); a real
# call adds Silero (≈ 0.1 ms a 32 ms window: docs/architecture.md) and, on phone lines, the echo
# canceller (0.13 ms per 10 ms block: docs/benchmarks.md, "Echo cancellation").
WS_CORES_PER_CALL = 0.23 / 64
SILERO_CORES_PER_CALL = 0.1 / 32
AEC_CORES_PER_CALL = 0.13 / 10


def webrtc_media_cores(turns_per_min: float = TURNS_PER_MIN) -> float:
    """A WebRTC call's media-worker cost when the models are elsewhere: the measured whole-stack
    cost minus the models' measured CPU at that turn rate (the turn model stays on the worker)."""
    models = sum(EMBEDDED_MODEL_CORE_S_PER_TURN.values()) * turns_per_min / 60
    return max(0.01, EMBEDDED_CORES_PER_CALL - models)


def step_audio_profile(turns_per_min: float = TURNS_PER_MIN, cores_per_box: int = 16,
                       transport: str = "webrtc") -> Profile:
    if transport == "webrtc":  # measured whole: Silero and Smart Turn are in it
        media = webrtc_media_cores(turns_per_min)
    else:
        media = WS_CORES_PER_CALL + SILERO_CORES_PER_CALL + SMART_TURN_CORE_S_PER_TURN * turns_per_min / 60
        media += AEC_CORES_PER_CALL if transport == "telephony" else 0.0
    return Profile(turns_per_min, round(media, 4), cores_per_box, 0.9, (
        # ESTIMATE: Step-Audio-Chat 130B on vLLM, tensor parallel 4 (docs/step-audio.md: 4 × 80 GB).
        # A reply of ~30 tokens at an assumed 30 tokens/s per sequence under batching + ~0.1 s of
        # prefill of the new turn (the history is in the prefix cache: session affinity).
        Stage("llm", 1.1, 32, 4, 0.2, "ESTIMATE: 30 tok/s/sequence, 30-token replies, 32 sequences per tp-4 replica"),
        # ESTIMATE: TTS-3B codes + flow + HiFT, 10–20 real-time streams per GPU
        # (docs/step-audio-decoder.md, GPU estimate); a stream is held for the reply's ~4 s of audio.
        Stage("tts", 4.0, 15, 1, 0.1, "ESTIMATE: 15 real-time streams per GPU, 4 s of reply audio"),
        # ESTIMATE: the dual-codebook tokenizer (Paraformer + CosyVoice) once per turn, batched.
        Stage("tokenizer", 0.1, 16, 1, 0.1, "ESTIMATE: 0.1 s per turn, 16 turns per GPU batch"),
    ))


# -- queueing ------------------------------------------------------------------------------------

def erlang_c(c: int, offered: float) -> float:
    """P(an arrival waits) in M/M/c with offered load `offered` = λ/μ (Erlangs); 1 if unstable."""
    if c <= 0 or offered >= c:
        return 1.0
    if offered <= 0:
        return 0.0
    erlang_b = 1.0  # the Erlang B recursion is stable for large c
    for k in range(1, c + 1):
        erlang_b = offered * erlang_b / (k + offered * erlang_b)
    rho = offered / c
    return erlang_b / (1 - rho + rho * erlang_b)


def wait_exceeds(c: int, arrival_rate: float, service_s: float, t: float) -> float:
    """P(wait > t) in M/M/c."""
    if arrival_rate <= 0:
        return 0.0
    offered = arrival_rate * service_s
    if offered >= c:
        return 1.0
    return erlang_c(c, offered) * math.exp(-(c / service_s - arrival_rate) * t)


def mean_wait(c: int, arrival_rate: float, service_s: float) -> float:
    offered = arrival_rate * service_s
    if offered >= c:
        return math.inf
    return erlang_c(c, offered) * service_s / (c - offered)


def slots_needed(arrival_rate: float, service_s: float, wait_budget_s: float, quantile: float = 0.95) -> int:
    """The fewest slots with P(wait > budget) ≤ 1 − quantile."""
    if arrival_rate <= 0:
        return 0
    c = max(1, math.floor(arrival_rate * service_s) + 1)
    while wait_exceeds(c, arrival_rate, service_s, wait_budget_s) > 1 - quantile:
        c += 1
    return c


def simulate_wait(c: int, arrival_rate: float, service_s: float, customers: int = 100_000,
                  service: str = "exponential", seed: int = 1) -> list[float]:
    """Queue waits of `customers` Poisson arrivals at c FIFO servers (a discrete-event simulation:
    each arrival takes the earliest free server)."""
    rng = random.Random(seed)
    free_at = [0.0] * c  # a heap of the times each server becomes free
    t, waits = 0.0, []
    for _ in range(customers):
        t += rng.expovariate(arrival_rate)
        start = max(t, heapq.heappop(free_at))
        waits.append(start - t)
        duration = rng.expovariate(1 / service_s) if service == "exponential" else service_s
        heapq.heappush(free_at, start + duration)
    return waits


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- sizing --------------------------------------------------------------------------------------

def size(profile: Profile, calls: int) -> dict:
    """Boxes and GPUs for `calls` concurrent calls."""
    arrival = calls * profile.turns_per_min / 60
    media_cores = calls * profile.media_cores_per_call
    boxes = math.ceil(media_cores / (profile.cores_per_box * profile.target_utilization)) if calls else 0
    stages = {}
    for s in profile.stages:
        slots = slots_needed(arrival, s.service_s, s.wait_budget_s)
        replicas = math.ceil(slots / s.slots_per_replica) if slots else 0
        c = replicas * s.slots_per_replica
        stages[s.name] = {"turns_per_s": round(arrival, 3), "offered_slots": round(arrival * s.service_s, 2),
                          "slots": slots, "replicas": replicas, "gpus": replicas * s.gpus_per_replica,
                          "utilization": round(arrival * s.service_s / c, 3) if c else 0.0,
                          "p95_wait_budget_s": s.wait_budget_s,
                          "p_wait_over_budget": round(wait_exceeds(c, arrival, s.service_s, s.wait_budget_s), 4)
                          if c else 0.0}
    return {"calls": calls, "media_cores": round(media_cores, 1), "media_boxes": boxes,
            "cores_per_box": profile.cores_per_box, "stages": stages,
            "gpus": sum(v["gpus"] for v in stages.values())}


def embedded_boxes(calls: int, cores_per_box: int = 2, utilization: float = 0.9) -> int:
    """The embedded CPU stack (models on every box), at its measured whole-stack cost per call."""
    return math.ceil(calls * EMBEDDED_CORES_PER_CALL / (cores_per_box * utilization)) if calls else 0


def table(results: list[dict]) -> str:
    names = list(results[0]["stages"])
    lines = ["| calls | media cores | media boxes (cores) | " + " | ".join(f"{n} replicas / GPUs / util." for n in names)
             + " | GPUs |", "|---|---|---|" + "---|" * len(names) + "---|"]
    for r in results:
        cells = [f"{v['replicas']} / {v['gpus']} / {v['utilization']:.0%}" for v in r["stages"].values()]
        lines.append(f"| {r['calls']} | {r['media_cores']} | {r['media_boxes']} ({r['cores_per_box']}) | "
                     + " | ".join(cells) + f" | {r['gpus']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.capacity_model", description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", default="100,1000")
    p.add_argument("--turns-per-min", type=float, default=TURNS_PER_MIN)
    p.add_argument("--cores-per-box", type=int, default=16)
    p.add_argument("--transport", choices=["webrtc", "websocket", "telephony"], default="webrtc")
    p.add_argument("--simulate", action="store_true", help="check each stage's p95 wait by simulation")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    profile = step_audio_profile(args.turns_per_min, args.cores_per_box, args.transport)
    results = [size(profile, int(n)) for n in args.calls.split(",")]
    for r in results:
        r["embedded_2core_boxes"] = embedded_boxes(r["calls"])
    if args.simulate:
        for r in results:
            for s in profile.stages:
                st = r["stages"][s.name]
                c = st["replicas"] * s.slots_per_replica
                if c:
                    for kind in ("exponential", "deterministic"):
                        waits = simulate_wait(c, st["turns_per_s"], s.service_s, 50_000, kind)
                        st[f"simulated_p_wait_over_budget_{kind}"] = round(
                            sum(w > s.wait_budget_s for w in waits) / len(waits), 4)
    if args.json:
        print(json.dumps({"profile": asdict(profile), "results": results}, indent=2))
        return 0
    print(f"{args.transport} calls, {args.turns_per_min:g} turns/min each; media {profile.media_cores_per_call} "
          f"cores per call; boxes of {args.cores_per_box} cores at {profile.target_utilization:.0%}\n")
    print(table(results))
    print("\nembedded CPU stack instead (models on every 2-core box, 0.34 cores per call measured): "
          + ", ".join(f"{r['calls']} calls → {r['embedded_2core_boxes']} boxes" for r in results))
    for s in profile.stages:
        print(f"- {s.name}: {s.service_s:g} s per turn, {s.slots_per_replica} slots × {s.gpus_per_replica} GPU(s) "
              f"per replica, p95 wait ≤ {s.wait_budget_s:g} s — {s.source}")
    if args.simulate:
        for r in results:
            print(f"- share of turns waiting longer than the budget at {r['calls']} calls, formula / simulated "
                  "(exponential service) / simulated (fixed service): "
                  + ", ".join(f"{k} {v['p_wait_over_budget']} / {v.get('simulated_p_wait_over_budget_exponential')}"
                              f" / {v.get('simulated_p_wait_over_budget_deterministic')}" for k, v in r["stages"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
