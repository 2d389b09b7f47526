"""Summaries of many turns: percentiles per level, and the knee of a concurrency sweep."""
from __future__ import annotations

import numpy as np

from bench.measure import TurnRecord


def percentile(values: list[float], q: float) -> float | None:
    vals = [v for v in values if v is not None]
    return round(float(np.percentile(vals, q)), 1) if vals else None


def summarize(records: list[TurnRecord]) -> dict:
    v2v = [r.v2v_ms for r in records if r.v2v_ms is not None]
    stops = [r.barge_stop_ms for r in records if r.barge_stop_ms is not None]
    summary = {
        "turns": len(records),
        "replied": len(v2v),
        # turns the server had and did not answer properly; refused turns (admission) are apart
        "errors": sum(r.error is not None and not r.refused for r in records),
        "refused": sum(r.refused for r in records),
        "v2v_p50_ms": percentile(v2v, 50), "v2v_p95_ms": percentile(v2v, 95),
        "v2v_p99_ms": percentile(v2v, 99), "v2v_mean_ms": round(float(np.mean(v2v)), 1) if v2v else None,
        "max_gap_ms": max((r.max_gap_ms for r in records), default=0.0),
        "gaps_over_100ms": sum(r.gaps_over_100ms for r in records),
        "jitter_p95_ms": percentile([r.jitter_ms for r in records if r.jitter_ms is not None], 95),
        "barge_stop_p50_ms": percentile(stops, 50), "barge_stop_p95_ms": percentile(stops, 95),
        "speculative_turns": sum(bool(r.speculative) for r in records),
        "caller_stalled_turns": sum(r.caller_stalled for r in records),
        "caller_stall_gaps": sum(r.caller_stall_gaps for r in records),
    }
    for key in ("end_of_turn_delay_ms", "asr_ms", "llm_ttft_ms", "tts_first_audio_ms",
                "eot_to_first_audio_ms", "saved_ms"):
        vals = [r.server.get(key) for r in records if r.server.get(key) is not None]
        summary[f"server_{key}_p50"] = percentile(vals, 50)
    return summary


def knee(summaries: dict[int, dict], threshold_ms: float, max_gap_ms: float = 100.0,
         refusals_fail: bool = False) -> int | None:
    """Highest concurrency whose p95 voice-to-voice is under the threshold with no long gaps and
    every turn the server took answered, every lower level passing too (a level past a failing one
    does not count). Refused calls are admission, not unanswered turns: they do not fail a level
    unless `refusals_fail` (the knee with every caller admitted)."""
    best = None
    for level in sorted(summaries):
        s = summaries[level]
        ok = (s.get("v2v_p95_ms") is not None and s["v2v_p95_ms"] <= threshold_ms
              and s.get("max_gap_ms", 0) <= max_gap_ms and s.get("errors", 0) == 0
              and not (refusals_fail and (s.get("refused", 0) or s.get("refused_calls", 0))))
        if not ok:
            break
        best = level
    return best
