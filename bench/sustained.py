"""The sustained run (`--sustained N --duration-s 300`): N callers call continuously, and the
report says whether anything drifts over time — latency per minute window, turns answered or not,
refusals, gaps, the server's memory from start to end, and its CPU per active session.

Pure functions over what the run recorded (turn records with their end-of-speech time, the call
intervals, the server's CPU/RSS samples and /metrics.json samples; all on the monotonic clock), so they
are tested on synthetic records.
"""
from __future__ import annotations

import numpy as np

from bench.stats import percentile


def _slope(x: list[float], y: list[float]) -> float | None:
    """Least-squares slope dy/dx, or None with fewer than 3 points or no spread in x."""
    if len(x) < 3 or max(x) - min(x) <= 0:
        return None
    return float(np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)[0])


def _sessions(calls: list[dict]) -> list[tuple[float, float]]:
    """Intervals of calls the server took (refused calls were never sessions)."""
    return [(c["t_start"], c["t_end"]) for c in calls if c.get("outcome") != "refused"
            and c.get("t_start") is not None and c.get("t_end") is not None]


def active_at(sessions: list[tuple[float, float]], t: float) -> int:
    return sum(a <= t < b for a, b in sessions)


def mean_active(sessions: list[tuple[float, float]], t0: float, t1: float) -> float | None:
    """Time-weighted mean number of calls in progress over [t0, t1]."""
    if t1 <= t0:
        return None
    return round(sum(max(0.0, min(b, t1) - max(a, t0)) for a, b in sessions) / (t1 - t0), 2)


def cpu_per_session(server_samples: list[dict], sessions: list[tuple[float, float]]) -> float | None:
    """Mean over CPU samples taken while calls were in progress of (server tree CPU % / calls)."""
    per = [s["cpu_percent"] / n for s in server_samples
           if s.get("cpu_percent") is not None and (n := active_at(sessions, s["t"])) > 0]
    return round(sum(per) / len(per), 1) if per else None


def _queue_max(metrics_samples: list[dict]) -> dict:
    """Per lane: the largest total queue (all kinds) in these /metrics.json samples."""
    out: dict[str, float] = {}
    for s in metrics_samples:
        lanes = (s.get("scheduler") or {}).get("lanes") or {}
        for name, lane in lanes.items():
            if isinstance(lane, dict):
                total = sum(v for v in (lane.get("queued") or {}).values() if isinstance(v, (int, float)))
                out[name] = max(out.get(name, 0), total)
    return out


def _per_turn(turns: list[dict], sessions, server_samples: list[dict], t0: float, t1: float) -> dict:
    """Turns said per call in progress per minute, and the server's CPU seconds per turn said."""
    said = sum(not t.get("refused") for t in turns)
    active, minutes = mean_active(sessions, t0, t1), (t1 - t0) / 60
    cpu = [s["cpu_percent"] for s in server_samples if s.get("cpu_percent") is not None and t0 <= s["t"] <= t1]
    return {"turns_per_call_minute": round(said / active / minutes, 2) if said and active and minutes else None,
            "server_cpu_s_per_turn": round(sum(cpu) / len(cpu) / 100 * (t1 - t0) / said, 2) if said and cpu else None}


def _turn_counts(turns: list[dict]) -> dict:
    said = [t for t in turns if not t.get("refused")]
    v2v = [t["v2v_ms"] for t in said if t.get("v2v_ms") is not None]
    return {"turns": len(said), "answered": len(v2v),
            "unanswered": sum(t.get("error") is not None for t in said),
            "v2v_p50_ms": percentile(v2v, 50), "v2v_p95_ms": percentile(v2v, 95),
            "max_gap_ms": max((t.get("max_gap_ms") or 0.0 for t in said), default=0.0),
            "gaps_over_100ms": sum(t.get("gaps_over_100ms") or 0 for t in said),
            "caller_stalled_turns": sum(bool(t.get("caller_stalled")) for t in said)}


def windows(turns: list[dict], calls: list[dict], server_samples: list[dict], metrics_samples: list[dict],
            t0: float, t1: float, window_s: float = 60.0) -> list[dict]:
    """Per window of `window_s` from t0 to t1: the turns whose speech ended in it (answered or
    not, latency p50/p95, gaps), calls refused in it, calls in progress (mean), the server's CPU
    (mean, and per call in progress), RSS max and the largest model queue per lane."""
    sessions = _sessions(calls)
    out = []
    n = max(1, int(np.ceil((t1 - t0) / window_s - 1e-9)))
    for i in range(n):
        a, b = t0 + i * window_s, min(t1, t0 + (i + 1) * window_s)
        last = i == n - 1  # the last window also takes what ended after t1 (turns finishing in the grace)
        inside = lambda t: t is not None and a <= t and (last or t < b)  # noqa: E731
        ts = [t for t in turns if inside(t.get("t_speech_end"))]
        srv = [s for s in server_samples if inside(s.get("t"))]
        cpu = [s["cpu_percent"] for s in srv if s.get("cpu_percent") is not None]
        out.append({
            "window": i, "from_s": round(a - t0, 1), "to_s": round(b - t0, 1),
            **_turn_counts(ts),
            "refused_calls": sum(c.get("outcome") == "refused" and inside(c.get("t_start")) for c in calls),
            "active_sessions_mean": mean_active(sessions, a, b),
            "server_cpu_mean_percent": round(sum(cpu) / len(cpu), 1) if cpu else None,
            "cpu_per_session_percent": cpu_per_session(srv, sessions),
            "server_rss_max_mib": max((s["rss_mib"] for s in srv if s.get("rss_mib") is not None), default=None),
            "queued_max": _queue_max([s for s in metrics_samples if inside(s.get("t"))]),
            **_leak_watch(srv, [s for s in metrics_samples if inside(s.get("t"))]),
        })
    return out


def _leak_watch(server_samples: list[dict], metrics_samples: list[dict]) -> dict:
    """In a window: the server's and its children's (the LLM server) RSS, at its largest and its
    median (a reply in synthesis lifts the largest for a moment; a leak lifts the median), the
    server's asyncio tasks and open file descriptors at their largest."""
    def values(rows: list[dict], key: str) -> list:
        return [r[key] for r in rows if isinstance(r.get(key), (int, float))]

    def top(rows: list[dict], key: str):
        return max(values(rows, key), default=None)

    def median(rows: list[dict], key: str):
        found = values(rows, key)
        return round(float(np.median(found)), 1) if found else None
    process = [s["process"] for s in metrics_samples if isinstance(s.get("process"), dict)]
    return {"rss_server_max_mib": top(server_samples, "rss_server_mib"),
            "rss_server_median_mib": median(server_samples, "rss_server_mib"),
            "rss_children_max_mib": top(server_samples, "rss_children_mib"),
            "rss_children_median_mib": median(server_samples, "rss_children_mib"),
            "asyncio_tasks_max": top(process, "asyncio_tasks"), "open_fds_max": top(process, "open_fds")}


def _growth(rows: list[dict], key: str) -> dict:
    """After warm-up (the first window: models load, caches fill), the first third of the windows
    against the last third, each by its median window: one busy window is not a trend."""
    values = [r[key] for r in rows[1:] if r.get(key) is not None]
    if len(values) < 2:
        return {"first": None, "last": None, "growth_percent": None}
    third = max(1, len(values) // 3)
    first, last = float(np.median(values[:third])), float(np.median(values[-third:]))
    return {"first": round(first, 1), "last": round(last, 1),
            "growth_percent": round(100 * (last - first) / first, 1) if first else None}


def report(turns: list[dict], calls: list[dict], server_samples: list[dict], metrics_samples: list[dict],
           t0: float, t1: float, window_s: float = 60.0) -> dict:
    """The whole run: per-window rows and the overall figures (drift, memory growth, CPU per
    active session, every turn answered or not, refusals)."""
    rows = windows(turns, calls, server_samples, metrics_samples, t0, t1, window_s)
    answered = [t for t in turns if t.get("v2v_ms") is not None and t.get("t_speech_end") is not None]
    slope = _slope([(t["t_speech_end"] - t0) / 60 for t in answered], [t["v2v_ms"] for t in answered])
    full = [r for r in rows if r["v2v_p50_ms"] is not None]
    srv = sorted((s for s in server_samples if s.get("rss_mib") is not None), key=lambda s: s["t"])
    rss_slope = _slope([(s["t"] - t0) / 60 for s in srv], [s["rss_mib"] for s in srv])
    sessions = _sessions(calls)
    overall = {
        "seconds": round(t1 - t0, 1), "window_s": window_s,
        **_turn_counts(turns),
        "refused_turns": sum(bool(t.get("refused")) for t in turns),
        "calls": len(calls), "refused_calls": sum(c.get("outcome") == "refused" for c in calls),
        "failed_calls": sum(c.get("outcome") in ("error", "cut") for c in calls),
        "v2v_slope_ms_per_min": None if slope is None else round(slope, 1),
        "v2v_p50_first_last_window_ms": [full[0]["v2v_p50_ms"], full[-1]["v2v_p50_ms"]] if full else None,
        "v2v_p95_first_last_window_ms": [full[0]["v2v_p95_ms"], full[-1]["v2v_p95_ms"]] if full else None,
        "active_sessions_mean": mean_active(sessions, t0, t1),
        "cpu_per_session_percent": cpu_per_session(server_samples, sessions),
        # Per turn, not only per call: shorter replies mean more turns a minute at the same CPU per
        # call (docs/benchmarks.md, "Replies end at a sentence end").
        **_per_turn(turns, sessions, server_samples, t0, t1),
        "server_rss_start_mib": srv[0]["rss_mib"] if srv else None,
        "server_rss_end_mib": srv[-1]["rss_mib"] if srv else None,
        "server_rss_max_mib": max((s["rss_mib"] for s in srv), default=None),
        "server_rss_growth_mib": round(srv[-1]["rss_mib"] - srv[0]["rss_mib"], 1) if srv else None,
        "server_rss_slope_mib_per_min": None if rss_slope is None else round(rss_slope, 2),
        "after_warm_up": {key: _growth(rows, key) for key in
                          ("rss_server_median_mib", "rss_children_median_mib", "rss_server_max_mib",
                           "rss_children_max_mib", "asyncio_tasks_max", "open_fds_max")},
    }
    return {"overall": overall, "windows": rows}
