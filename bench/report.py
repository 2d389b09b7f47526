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


def markdown(result: dict) -> str:
    lines = [f"# step-realtime bench ({result['transport']})", "",
             f"Command: `{result['command']}`", "",
             f"Knee (highest concurrency with p95 voice-to-voice ≤ {result['threshold_ms']:g} ms, no gap "
             f"> {result['max_gap_ms']:g} ms, every turn answered): "
             + ", ".join(f"**{k}**: {_fmt(v)}" for k, v in result["knee"].items()), "",
             "## Voice-to-voice at the caller (ms)", "",
             "| variant | callers | turns | p50 | p95 | p99 | max gap | gaps > 100 ms | barge-in stop p50 "
             "| errors | server CPU mean / max % | server RSS max MiB | caller loop lag max ms "
             "| turns / gaps during caller stalls | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        s, srv = r["summary"], r["server"]
        lines.append(f"| {r['variant']} | {r['concurrency']} | {s['turns']} | {_fmt(s['v2v_p50_ms'])} | "
                     f"{_fmt(s['v2v_p95_ms'])} | {_fmt(s['v2v_p99_ms'])} | {_fmt(s['max_gap_ms'])} | "
                     f"{s['gaps_over_100ms']} | {_fmt(s['barge_stop_p50_ms'])} | {s['errors']} | "
                     f"{_fmt(srv.get('cpu_mean_percent'))} / {_fmt(srv.get('cpu_max_percent'))} | "
                     f"{_fmt(srv.get('rss_max_mib'))} | {_fmt(s.get('caller_loop_lag_max_ms'))} | "
                     f"{s.get('caller_stalled_turns', 0)} / {s.get('caller_stall_gaps', 0)} | "
                     f"{_fmt(s.get('load_average_1m'))} |")
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
    if result["notes"]:
        lines += ["", "Notes:", *[f"- {n}" for n in result["notes"]]]
    errors = [e for r in result["runs"] for e in r["call_errors"]]
    errors += [f"{t['conversation']} turn {t['turn']} (caller {t['caller']}, {r['variant']} × {r['concurrency']}): "
               f"{t['error']}" for r in result["runs"] for t in r["turns"] if t["error"]]
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
