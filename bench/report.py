"""The bench's output: results.json (every turn), summary.md (tables) and PNG plots."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

STAGES = [("end_of_turn_delay_ms", "end-of-turn wait"), ("asr_ms", "ASR"), ("llm_ttft_ms", "LLM first token"),
          ("tts_first_audio_ms", "TTS first audio")]


def compare(runs: list[dict], names: list[str]) -> list[dict]:
    """B against A per concurrency level: difference (B − A) and ratio (B / A) of p50 and p95."""
    if len(names) != 2:
        return []
    a_name, b_name = names
    by = {(r["variant"], r["concurrency"]): r["summary"] for r in runs}
    rows = []
    for level in sorted({r["concurrency"] for r in runs}):
        a, b = by.get((a_name, level)), by.get((b_name, level))
        if not a or not b:
            continue
        row = {"concurrency": level, "a": a_name, "b": b_name}
        for key in ("v2v_p50_ms", "v2v_p95_ms", "v2v_mean_ms"):
            va, vb = a.get(key), b.get(key)
            row[key] = {"a": va, "b": vb, "diff": None if va is None or vb is None else round(vb - va, 1),
                        "ratio": None if not va or vb is None else round(vb / va, 3)}
        rows.append(row)
    return rows


def _fmt(v, unit: str = "") -> str:
    return "–" if v is None else f"{v:g}{unit}"


def _pair(a, b, unit: str = "") -> str:
    return "–" if a is None and b is None else f"{_fmt(a, unit)} / {_fmt(b, unit)}"


def _knee_line(result: dict) -> str:
    knees = result.get("knee") or {}
    if not knees:
        return ""
    line = (f"Knee (highest concurrency with p95 voice-to-voice ≤ {result['threshold_ms']:g} ms, no gap "
            f"> {result['max_gap_ms']:g} ms, every turn the server took answered): "
            + ", ".join(f"**{k}**: {_fmt(v)}" for k, v in knees.items()))
    admitted = result.get("knee_all_admitted") or {}
    if admitted and (admitted != knees or any(r["summary"].get("refused_calls") for r in result["runs"])):
        line += ("; with every call admitted too (a refusal fails the level): "
                 + ", ".join(f"**{k}**: {_fmt(v)}" for k, v in admitted.items()))
    return line


def _latency_table(result: dict) -> list[str]:
    lines = ["## Voice-to-voice at the caller (ms), and what the machine was doing", "",
             "| variant | callers | turns | p50 | p95 | p99 | max gap | gaps > 100 ms | barge-in stop p50 "
             "| unanswered | refused calls / turns | server CPU mean / max % | server RSS max MiB | load avg "
             "| caller procs | caller CPU % sum / busiest | caller loop lag p99 / max ms "
             "| turns / gaps during caller stalls |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        s, srv = r["summary"], r["server"]
        procs = s.get("caller_procs")
        lines.append(f"| {r['variant']} | {r['concurrency']} | {s['turns']} | {_fmt(s['v2v_p50_ms'])} | "
                     f"{_fmt(s['v2v_p95_ms'])} | {_fmt(s['v2v_p99_ms'])} | {_fmt(s['max_gap_ms'])} | "
                     f"{s['gaps_over_100ms']} | {_fmt(s['barge_stop_p50_ms'])} | {s['errors']} | "
                     f"{s.get('refused_calls', 0)} / {s.get('refused', 0)} | "
                     f"{_pair(srv.get('cpu_mean_percent'), srv.get('cpu_max_percent'))} | "
                     f"{_fmt(srv.get('rss_max_mib'))} | {_fmt(s.get('load_average_1m'))} | "
                     f"{'in-process' if procs == 0 else _fmt(procs)} | "
                     f"{_pair(s.get('caller_cpu_percent'), s.get('caller_cpu_busiest_percent'))} | "
                     f"{_pair(s.get('caller_loop_lag_p99_ms'), s.get('caller_loop_lag_max_ms'))} | "
                     f"{s.get('caller_stalled_turns', 0)} / {s.get('caller_stall_gaps', 0)} |")
    return lines


def _caller_procs_table(result: dict) -> list[str]:
    rows = [(r, p) for r in result["runs"] for p in r.get("callers", []) if not p.get("in_process")]
    if not rows or all(len(r.get("callers", [])) < 2 and not any(p.get("error") for p in r.get("callers", []))
                       for r in result["runs"]):
        return []
    lines = ["", "## The callers' own processes (each measures its own CPU and event-loop lag)", "",
             "| variant | callers | process | its callers | CPU mean / max % | loop lag p99 / max ms | stalls > 20 ms "
             "(total s) | exit | problem |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r, p in rows:
        lines.append(f"| {r['variant']} | {r['concurrency']} | {p['proc']} (pid {p.get('pid')}) | "
                     f"{','.join(map(str, p.get('callers', [])))} | "
                     f"{_pair(p.get('cpu_mean_percent'), p.get('cpu_max_percent'))} | "
                     f"{_pair(p.get('caller_loop_lag_p99_ms'), p.get('caller_loop_lag_max_ms'))} | "
                     f"{_fmt(p.get('caller_stalls'))} ({_fmt(p.get('caller_stall_s'))}) | {_fmt(p.get('exit_code'))} | "
                     f"{p.get('error') or ''} |")
    return lines


def _kinds_cell(per_kind: dict, fmt) -> str:
    return " · ".join(f"{kind} {fmt(v)}" for kind, v in per_kind.items()) or "–"


def _queue_tables(result: dict) -> list[str]:
    runs = [r for r in result["runs"] if r.get("scheduler")]
    if not runs:
        return []
    lines = ["", "## Server model queues (GET /metrics.json \"scheduler\", sampled every 1 s during the level)", "",
             "Queued: max / mean depth per kind over the level. Wait: the server's own p50 / p95 per kind as it "
             "reported them at the end of the level. Jobs, dropped, busy: during the level.", "",
             "| variant | callers | lane | workers | busy % | jobs | dropped | batch size mean "
             "| queued max / mean | wait p50 / p95 ms | stage counters |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        for name, lane in r["scheduler"]["lanes"].items():
            queued = _kinds_cell(lane.get("queued", {}), lambda q: f"{_fmt(q.get('max'))} / {_fmt(q.get('mean'))}")
            wait = _kinds_cell(lane.get("wait_ms", {}), lambda w: f"{_fmt(w.get('p50'))} / {_fmt(w.get('p95'))}")
            lines.append(f"| {r['variant']} | {r['concurrency']} | {name} | {_fmt(lane.get('workers'))} | "
                         f"{_fmt(lane.get('busy_percent'))} | {_fmt(lane.get('jobs'))} | {_fmt(lane.get('dropped'))} | "
                         f"{_fmt(lane.get('batch_size_mean'))} | {queued} | {wait} | "
                         f"{' · '.join(f'{k} {_fmt(v)}' for k, v in (lane.get('counters') or {}).items())} |")
    loads = [r for r in runs if r["scheduler"].get("load")]
    if loads:
        lines += ["", "Admission, as the server saw it (\"load\"; refused: the server's own counter during the level):",
                  "", "| variant | callers | admitting (share of samples) | capacity sessions min / last "
                  "| admitted max | session CPU (cores): in use / measured | CPU util mean / max "
                  "| final wait p95 max ms | refused | why not admitting |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in loads:
            ld = r["scheduler"]["load"]
            why = "; ".join(f"{k} ({n}×)" for k, n in (ld.get("not_admitting_reasons") or {}).items())
            lines.append(f"| {r['variant']} | {r['concurrency']} | {_fmt(ld.get('admitting_share'))} | "
                         f"{_pair(ld.get('capacity_sessions_min'), ld.get('capacity_sessions_last'))} | "
                         f"{_fmt(ld.get('admitted_sessions_max'))} | "
                         f"{_pair(ld.get('session_cpu_last'), ld.get('measured_session_cpu_last'))} | "
                         f"{_pair(ld.get('cpu_util_mean'), ld.get('cpu_util_max'))} | "
                         f"{_fmt(ld.get('final_wait_p95_ms_max'))} | {_fmt(ld.get('refused'))} | {why} |")
    return lines


def _sustained_section(result: dict) -> list[str]:
    st = result.get("sustained")
    if not st:
        return []
    o = st["overall"]
    p50s, p95s = o.get("v2v_p50_first_last_window_ms") or [None, None], o.get("v2v_p95_first_last_window_ms") or [None, None]
    lines = ["", f"## Sustained: {st['callers']} callers calling continuously for {st['duration_s']:g} s "
             f"({st['variant']})", "",
             f"- turns said {o['turns']}: answered {o['answered']}, unanswered {o['unanswered']}; calls {o['calls']}, "
             f"refused {o['refused_calls']} ({o['refused_turns']} turns), failed or cut {o['failed_calls']}",
             f"- voice-to-voice p50 {_fmt(o['v2v_p50_ms'])} / p95 {_fmt(o['v2v_p95_ms'])} ms; first → last window p50 "
             f"{_fmt(p50s[0])} → {_fmt(p50s[1])}, p95 {_fmt(p95s[0])} → {_fmt(p95s[1])}; "
             f"trend {_fmt(o['v2v_slope_ms_per_min'])} ms per minute (least squares over every answered turn)",
             f"- gaps: max {_fmt(o['max_gap_ms'])} ms, {o['gaps_over_100ms']} over 100 ms; "
             f"{o['caller_stalled_turns']} turns during caller stalls",
             f"- server RSS start → end {_fmt(o['server_rss_start_mib'])} → {_fmt(o['server_rss_end_mib'])} MiB "
             f"(growth {_fmt(o['server_rss_growth_mib'])}, trend {_fmt(o['server_rss_slope_mib_per_min'])} MiB per "
             f"minute, max {_fmt(o['server_rss_max_mib'])})",
             f"- calls in progress, mean {_fmt(o['active_sessions_mean'])}; server CPU per call in progress "
             f"{_fmt(o['cpu_per_session_percent'])} % of a core (server process tree CPU / calls in progress, "
             f"per 0.5 s sample); {_fmt(o.get('turns_per_call_minute'))} turns per call per minute, server CPU "
             f"{_fmt(o.get('server_cpu_s_per_turn'))} core-seconds per turn",
             *_after_warm_up(o.get("after_warm_up") or {}), "",
             "| window | turns | answered | unanswered | refused calls | p50 | p95 | max gap | calls in progress "
             "| server CPU mean % | CPU per call % | RSS max MiB | queued max per lane |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for w in st["windows"]:
        queued = " · ".join(f"{k} {_fmt(v)}" for k, v in (w.get("queued_max") or {}).items()) or "–"
        lines.append(f"| {w['from_s']:g}–{w['to_s']:g} s | {w['turns']} | {w['answered']} | {w['unanswered']} | "
                     f"{w['refused_calls']} | {_fmt(w['v2v_p50_ms'])} | {_fmt(w['v2v_p95_ms'])} | "
                     f"{_fmt(w['max_gap_ms'])} | {_fmt(w['active_sessions_mean'])} | "
                     f"{_fmt(w['server_cpu_mean_percent'])} | {_fmt(w['cpu_per_session_percent'])} | "
                     f"{_fmt(w['server_rss_max_mib'])} | {queued} |")
    return lines


def _after_warm_up(grown: dict) -> list[str]:
    """After warm-up, first third of the windows → last third: what a leak would grow."""
    names = {"rss_server_median_mib": "server RSS (median) MiB", "rss_server_max_mib": "(largest)",
             "rss_children_median_mib": "LLM server (children) RSS (median) MiB", "rss_children_max_mib": "(largest)",
             "asyncio_tasks_max": "asyncio tasks", "open_fds_max": "open file descriptors"}
    parts = [f"{label} {_fmt(g.get('first'))} → {_fmt(g.get('last'))} ({_fmt(g.get('growth_percent'))} %)"
             for key, label in names.items() if (g := grown.get(key)) and g.get("first") is not None]
    return [f"- after warm-up (first third of the windows → last third, median window): {'; '.join(parts)}"] if parts else []


def markdown(result: dict) -> str:
    lines = [f"# step-realtime bench ({result['transport']})", "", f"Command: `{result['command']}`", ""]
    if knee_line := _knee_line(result):
        lines += [knee_line, ""]
    lines += _latency_table(result)
    lines += _caller_procs_table(result)
    lines += _sustained_section(result)
    lines += ["", "## Server-side stages, p50 (ms, from step.turn_metrics)", "",
              "| variant | callers | " + " | ".join(label for _, label in STAGES)
              + " | end of turn → first audio | saved by speculation | speculative turns |",
              "|---|---|" + "---|" * (len(STAGES) + 3)]
    for r in result["runs"]:
        s = r["summary"]
        lines.append(f"| {r['variant']} | {r['concurrency']} | "
                     + " | ".join(_fmt(s.get(f"server_{k}_p50")) for k, _ in STAGES)
                     + f" | {_fmt(s.get('server_eot_to_first_audio_ms_p50'))} | {_fmt(s.get('server_saved_ms_p50'))}"
                     f" | {s['speculative_turns']}/{s['turns']} |")
    lines += _queue_tables(result)
    if result["ab"]:
        a, b = result["ab"][0]["a"], result["ab"][0]["b"]
        lines += ["", f"## A/B: {b} against {a} (difference = B − A, ratio = B / A)", "",
                  "| callers | p50 A | p50 B | p50 diff | p50 ratio | p95 A | p95 B | p95 diff | p95 ratio |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in result["ab"]:
            p50, p95 = row["v2v_p50_ms"], row["v2v_p95_ms"]
            lines.append(f"| {row['concurrency']} | {_fmt(p50['a'])} | {_fmt(p50['b'])} | {_fmt(p50['diff'])} | "
                         f"{_fmt(p50['ratio'])} | {_fmt(p95['a'])} | {_fmt(p95['b'])} | {_fmt(p95['diff'])} | "
                         f"{_fmt(p95['ratio'])} |")
    spread = [r for r in result["runs"] if r["summary"].get("worker_calls")]
    if spread:  # bench/cluster.py: how the entry spread each level's calls
        lines += ["", "## Calls per worker (sessions each worker started during the level; ? = restarted)", ""]
        lines += [f"- {r['variant']} × {r['concurrency']}: "
                  + ", ".join(f"{k} {_fmt(v)}" for k, v in r["summary"]["worker_calls"].items()) for r in spread]
    if result["notes"]:
        lines += ["", "Notes:", *[f"- {n}" for n in result["notes"]]]
    refusals: dict[str, int] = {}
    for r in result["runs"]:
        for c in r.get("calls", []):
            if c.get("outcome") == "refused":
                key = f"{r['variant']} × {r['concurrency']}: {c.get('reason')}"
                refusals[key] = refusals.get(key, 0) + 1
    if refusals:
        lines += ["", "Refused calls:", *[f"- {k} ({n}×)" for k, n in refusals.items()]]
    errors = [e for r in result["runs"] for e in r["call_errors"]]
    errors += [f"{t['conversation']} turn {t['turn']} (caller {t['caller']}, {r['variant']} × {r['concurrency']}): "
               f"{t['error']}" for r in result["runs"] for t in r["turns"] if t["error"] and not t.get("refused")]
    if errors:
        lines += ["", "Errors:", *[f"- {e}" for e in errors[:30]]]
        if len(errors) > 30:
            lines.append(f"- … and {len(errors) - 30} more (results.json)")
    return "\n".join(lines) + "\n"


def plot_cdf(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [v["name"] for v in result["variants"]]
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.2), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], names):
        for r in (r for r in result["runs"] if r["variant"] == name):
            v = np.sort([t["v2v_ms"] for t in r["turns"] if t["v2v_ms"] is not None])
            if len(v):
                ax.step(np.r_[v[0], v], np.r_[0, np.arange(1, len(v) + 1) / len(v)], where="post",
                        label=f"{r['concurrency']} caller(s)")
        ax.axvline(result["threshold_ms"], color="grey", ls="--", lw=1)
        ax.set(title=name, xlabel="voice-to-voice at the caller (ms)", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right")
    axes[0][0].set_ylabel("fraction of turns")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_stages(result: dict, path: Path) -> None:
    """Left: the p50 voice-to-voice split into the server's end-of-turn wait, the server's time
    from end of turn to first audio, and the rest (transport, jitter buffers, pacing: what the
    server's clock does not see). Right: the stages' own p50s (they overlap the wait when a
    speculation is committed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [v["name"] for v in result["variants"]]
    runs = sorted(result["runs"], key=lambda r: (order.index(r["variant"]), r["concurrency"]))
    labels = [f"{r['variant']}\n×{r['concurrency']}" for r in runs]
    x = np.arange(len(runs))

    def p50(key: str) -> np.ndarray:
        return np.array([r["summary"].get(key) or 0.0 for r in runs], dtype=float)

    fig, (left, right) = plt.subplots(1, 2, figsize=(max(10, 1.6 * len(runs) + 4), 5.6))
    total, wait, server = p50("v2v_p50_ms"), p50("server_end_of_turn_delay_ms_p50"), p50("server_eot_to_first_audio_ms_p50")
    rest = np.clip(total - wait - server, 0, None)
    left.bar(x, wait, label="end-of-turn wait (server)")
    left.bar(x, server, bottom=wait, label="end of turn → first audio (server)")
    left.bar(x, rest, bottom=wait + server, label="rest: transport, buffers", color="lightgrey")
    left.plot(x, total, "k_", ms=24, label="voice-to-voice p50 at the caller")
    left.set(ylabel="ms", title="Voice-to-voice p50, split")
    width = 0.8 / (len(STAGES) + 1)
    for i, (key, label) in enumerate([*STAGES[1:], ("saved_ms", "saved by speculation")]):
        right.bar(x + (i - len(STAGES) / 2) * width, p50(f"server_{key}_p50"), width, label=label)
    right.set(ylabel="ms", title="Server stages, p50 (step.turn_metrics)")
    for ax in (left, right):
        ax.set_xticks(x, labels, fontsize=8)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "summary.md"]
    paths[0].write_text(json.dumps(result, indent=1, ensure_ascii=False))
    paths[1].write_text(markdown(result), encoding="utf-8")
    try:
        plot_cdf(result, out / "latency_cdf.png")
        plot_stages(result, out / "stages.png")
        paths += [out / "latency_cdf.png", out / "stages.png"]
    except ImportError:
        print("bench: matplotlib is not installed (pip install '.[bench]'): no plots", flush=True)
    return paths
