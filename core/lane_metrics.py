"""A scheduler lane's figures for /metrics.json and the bench: queue depths per kind, waits,
busy time, batches. Kept apart from core/scheduler.py, which decides who runs next."""
from __future__ import annotations

from typing import Any


def percentile(ordered: list[float], q: float) -> float:
    """The q-th percentile of sorted values (nearest rank)."""
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def lane_snapshot(lane: Any) -> dict[str, Any]:
    """`lane`: a core.scheduler.Lane (its `waits` has a key per kind of work)."""
    queued = {kind.name.lower(): 0 for kind in lane.waits}
    for job in lane._queue:
        queued[job.kind().name.lower()] += 1
    waits = {}
    for kind, values in lane.waits.items():
        if values:
            ordered = sorted(values)
            waits[kind.name.lower()] = {
                "p50": round(percentile(ordered, 50) * 1000, 1), "p95": round(percentile(ordered, 95) * 1000, 1),
                "max": round(ordered[-1] * 1000, 1), "n": len(ordered)}
    return {"workers": lane.workers, "running": lane.running, "queued": queued, "wait_ms": waits,
            "oldest_running_s": round(lane.oldest_running_s(), 2),
            "busy_s": round(lane.busy_s, 2), "jobs": lane.jobs, "dropped": lane.dropped, "batches": lane.batches,
            "batch_size_mean": round(lane.batched_items / lane.batches, 2) if lane.batches else None,
            **({"counters": dict(lane.counters)} if lane.counters else {})}
