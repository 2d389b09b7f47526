"""`python -m bench` / `step-realtime bench`: N concurrent synthetic callers against a server,
voice-to-voice latency measured at the callers, a concurrency sweep that finds the knee, and an
A/B (speculation on/off, or --vs another config) interleaved on the same corpus. The callers run
in their own processes beside the bench's (--caller-procs), each measuring its own cost; or
--sustained N callers call continuously for --duration-s and the report shows what drifts.
"""
from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path


from bench import cluster, report, sustained
from bench.caller_proc import run_in_processes
from bench.callers import (CALLER_MODULES, STAGGER_S, CallerPlan, LoopLag, ShareJob, auto_procs, caller_summary,
                           run_in_process, split)
from bench.corpus import Conversation, load_corpus, save_conversations
from bench.stats import knee, summarize
from bench.measure import API_KEY_ENV
from bench.mic import ScriptOptions
from bench.server import MetricsSampler, ResourceSampler, ServerProcess

__all__ = ["LoopLag", "main", "bench", "parse_args"]  # LoopLag: it used to live here


@dataclass
class Variant:
    name: str
    config: str | None
    overrides: dict = field(default_factory=dict)
    server: ServerProcess | None = None
    sampler: ResourceSampler | None = None
    metrics: MetricsSampler | None = None
    url: str | None = None
    echo: object = None  # the in-process echo agent's runner
    workers: int = 0  # > 0: that many workers behind HAProxy (bench/cluster.py)
    worker_urls: dict = field(default_factory=dict)  # name -> the worker's own URL, for the spread


class Progress:
    def __init__(self, stream=sys.stderr) -> None:
        self.stream, self.t0 = stream, time.monotonic()
        self.tty = stream.isatty()
        self.label, self.done, self.total, self.last = "", 0, 0, None

    def level(self, label: str, total: int | None) -> None:
        self.label, self.done, self.total, self.last = label, 0, total, None
        self._show()

    def turn(self, v2v_ms: float | None) -> None:
        self.done += 1
        self.last = v2v_ms
        self._show()

    def _show(self) -> None:
        last = "no reply" if self.last is None else f"{self.last:.0f} ms"
        of = f"/~{self.total}" if self.total else ""
        line = (f"[{time.monotonic() - self.t0:5.0f}s] {self.label}: turn {self.done}{of}"
                + (f", last voice-to-voice {last}" if self.done else ""))
        self.stream.write(("\r\033[K" + line) if self.tty else line + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        self.stream.write(("\n" if self.tty else "") + text + "\n")
        self.stream.flush()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="step-realtime bench", description=__doc__)
    p.add_argument("--config", default="configs/fake.yaml", help="server config to start (default: %(default)s)")
    p.add_argument("--url", help="bench a running server instead of starting one (no A/B)")
    p.add_argument("--api-key", help="with --url, for a server with auth on: the key the callers send "
                                     f"(Authorization: Bearer); default ${API_KEY_ENV}")
    p.add_argument("--server-pid", type=int, help="with --url: sample this process's CPU/RSS")
    p.add_argument("--echo-delay-ms", type=float,
                   help="bench the built-in echo agent (replies this long after speech ends) to check the bench")
    p.add_argument("--transport", choices=sorted(CALLER_MODULES), default="webrtc")
    p.add_argument("--caller-procs", default="auto", metavar="K|auto",
                   help="run the callers in K processes beside the bench's own; auto (default): one per "
                        "4 callers, at least 1; 0: in the bench's own process")
    p.add_argument("--concurrency", default="1,2,4,8", help="levels of the sweep (default: %(default)s)")
    p.add_argument("--ab", choices=["speculation", "none"], default="speculation",
                   help="A/B in the same run: controller.speculation on vs off (default)")
    p.add_argument("--vs", metavar="OTHER.yaml", help="A/B against another config instead")
    p.add_argument("--threshold-ms", type=float, default=1500.0, help="knee: p95 voice-to-voice limit")
    p.add_argument("--max-gap-ms", type=float, default=100.0, help="knee: longest audio gap allowed")
    p.add_argument("--min-turns", type=int, default=6, help="turns per level at least (callers call again)")
    p.add_argument("--max-turns", type=int, help="at most this many turns of each conversation")
    p.add_argument("--conversations", type=int, help="use only the first N conversations of the corpus")
    p.add_argument("--deadline-s", type=float, default=540.0, help="whole run's time budget")
    p.add_argument("--full-sweep", action="store_true", help="go on past the first level that fails")
    p.add_argument("--reply-timeout-s", type=float, default=8.0)
    p.add_argument("--no-warmup", action="store_true", help="skip the unmeasured first turn per server")
    p.add_argument("--startup-timeout-s", type=float, default=300.0)
    p.add_argument("--cluster", type=int, metavar="N",
                   help="A/B: the single-process server vs N workers behind HAProxy (serve --workers N "
                        "--haproxy), same config (or the --vs config for the workers, e.g. configs/ray.yaml "
                        "with its model tier running); reports calls per worker (bench/cluster.py)")
    p.add_argument("--worker-url", action="append", default=[], metavar="URL",
                   help="with --url (a running cluster's entry): a worker's own URL, for the spread; repeat")
    p.add_argument("--sustained", type=int, metavar="N",
                   help="instead of the sweep: N callers call continuously for --duration-s (no A/B)")
    p.add_argument("--duration-s", type=float, default=300.0, help="--sustained: how long (default: %(default)s)")
    p.add_argument("--window-s", type=float, default=60.0, help="--sustained: report window (default: %(default)s)")
    p.add_argument("--grace-s", type=float, default=30.0,
                   help="after the duration (sustained) or the time budget: calls still running then are cut")
    p.add_argument("--out", help="output folder (default: bench/out/<date-time>)")
    p.add_argument("--corpus-cache", type=Path, help="corpus cache folder")
    args = p.parse_args(argv)
    if args.api_key:  # the callers read it from the environment; caller processes inherit it
        os.environ[API_KEY_ENV] = args.api_key
    if args.caller_procs != "auto":
        try:
            args.caller_procs = int(args.caller_procs)
        except ValueError:
            p.error("--caller-procs: a number or auto")
        if args.caller_procs < 0:
            p.error("--caller-procs: 0 or more")
    if args.sustained is not None and args.sustained < 1:
        p.error("--sustained: at least 1 caller")
    if args.sustained and args.vs:
        p.error("--sustained runs one server: no --vs")
    if args.cluster is not None and (args.cluster < 1 or args.url):  # (--vs with --sustained: refused above)
        p.error("--cluster N: N >= 1, and not with --url")
    return args


def procs_for(args: argparse.Namespace, callers: int) -> int:
    return auto_procs(callers) if args.caller_procs == "auto" else min(args.caller_procs, callers)


def variants_of(args: argparse.Namespace) -> list[Variant]:
    if args.url:
        return [Variant("url", None, url=args.url,
                        worker_urls={f"w{i}": u for i, u in enumerate(args.worker_url)})]
    if args.cluster:
        stem = Path(args.config).stem
        if args.sustained:
            return [Variant(f"{stem}-{args.cluster}workers", args.config, workers=args.cluster)]
        workers_config = args.vs or args.config  # --vs: the workers run another config (a model tier)
        return [Variant(stem, args.config), Variant(f"{Path(workers_config).stem}-{args.cluster}workers",
                                                    workers_config, workers=args.cluster)]
    if args.echo_delay_ms:
        return [Variant(f"echo-{args.echo_delay_ms:g}ms", None)]
    if args.sustained:
        return [Variant(Path(args.config).stem, args.config)]
    if args.vs:
        return [Variant(Path(args.config).stem, args.config), Variant(Path(args.vs).stem, args.vs)]
    if args.ab == "speculation":
        return [Variant("speculation-on", args.config, {"controller.speculation": True}),
                Variant("speculation-off", args.config, {"controller.speculation": False})]
    return [Variant(Path(args.config).stem, args.config)]


async def warm_up(args, variant: Variant, corpus: list[Conversation], progress: Progress, deadline: float,
                  lag: LoopLag) -> None:
    """First model calls are slow (lazy loads, caches): one turn, not measured, in this process."""
    warm = Conversation(corpus[0].name, corpus[0].turns[:1])
    progress.level(f"{variant.name} warm-up", 1)
    job = ShareJob(args.transport, variant.url, [CallerPlan(0, [0], 0.0)],
                   ScriptOptions(reply_timeout_s=30, deadline=deadline), until=deadline, t0=time.monotonic(),
                   hard_stop=deadline + args.grace_s)
    run = await run_in_process(job, [warm], progress.turn, lag)
    for e in run.errors:
        progress.note("  warm-up: " + e)


async def run_level(args, variant: Variant, level: int, corpus: list[Conversation], progress: Progress,
                    deadline: float, lag: LoopLag, corpus_path: Path | None = None, log_dir: Path | None = None,
                    sustained_run: bool = False) -> dict:
    """One level: `level` callers (in --caller-procs processes), or the sustained run."""
    opts = ScriptOptions(reply_timeout_s=args.reply_timeout_s, deadline=deadline)
    n = len(corpus)
    if sustained_run:
        stagger = min(2.0, args.duration_s * 0.1 / level)
        plans = [CallerPlan(c, [(c + k) % n for k in range(n)], c * stagger) for c in range(level)]
        progress.level(f"{variant.name} × {level} caller(s), sustained {args.duration_s:g} s", None)
    else:
        avg_turns = sum(len(c.turns[:args.max_turns] if args.max_turns else c.turns) for c in corpus) / n
        per_caller = max(1, math.ceil(args.min_turns / (level * avg_turns)))
        plans = [CallerPlan(c, [(c + k * level) % n for k in range(per_caller)], c * STAGGER_S) for c in range(level)]
        progress.level(f"{variant.name} × {level} caller(s)", round(level * per_caller * avg_turns))
    tag = f"{variant.name}/{level}"
    for s in (variant.sampler, variant.metrics):
        if s:
            s.current = tag
    job = ShareJob(args.transport, variant.url, plans, opts, args.max_turns, sustained=sustained_run)
    window: dict = {}
    started = await cluster.sessions_started(variant.worker_urls) if variant.worker_urls else None

    def times() -> tuple[float, float, float]:
        t0 = time.monotonic() + 0.1  # every process has its "go" by then
        until = t0 + args.duration_s if sustained_run else deadline
        window.update(t0=t0, until=until)
        return t0, until, until + args.grace_s

    procs = procs_for(args, level)
    try:
        if procs == 0:
            job.t0, job.until, job.hard_stop = times()
            opts.deadline = job.until
            callers = await run_in_process(job, corpus, progress.turn, lag)
        else:
            jobs = [replace(job, plans=share) for share in split(plans, procs)]
            callers = await run_in_processes(jobs, corpus_path, log_dir, times, progress.turn,
                                             label=f"{variant.name}-x{level}")
    finally:
        for s in (variant.sampler, variant.metrics):
            if s:
                s.current = ""
    t_end = time.monotonic()
    records, errors = callers.records, callers.errors
    records.sort(key=lambda r: (r.caller, r.t_speech_end or 0.0))
    for e in errors:
        progress.note("  " + e)
    summary = summarize(records)
    summary["call_errors"] = len(errors)
    summary["calls"] = len(callers.calls)
    summary["refused_calls"] = sum(c.get("outcome") == "refused" for c in callers.calls)
    summary.update(caller_summary(callers.procs))
    summary["load_average_1m"] = round(os.getloadavg()[0], 2)
    if errors:
        summary["errors"] += len(errors)
    if started is not None:  # the calls of this level on each worker (the entry chose)
        summary["worker_calls"] = cluster.spread(started, await cluster.sessions_started(variant.worker_urls))
    t0 = window.get("t0", t_end)
    run = {"variant": variant.name, "concurrency": level, "seconds": round(t_end - t0, 1),
           "summary": summary, "server": variant.sampler.summary(tag) if variant.sampler else {},
           "callers": callers.procs, "call_errors": errors, "calls": callers.calls,
           "turns": [r.as_dict() for r in records]}
    scheduler = variant.metrics.summary(tag) if variant.metrics else {}
    if scheduler:
        run["scheduler"] = scheduler
    if sustained_run:
        samples = [x for x in variant.sampler.samples if x["tag"] == tag] if variant.sampler else []
        run["sustained"] = sustained.report(run["turns"], callers.calls, samples,
                                            variant.metrics.of(tag) if variant.metrics else [],
                                            t0, window.get("until", t_end), args.window_s)
    return run


async def start_echo(delay_ms: float):
    from aiohttp import web

    from bench.echo_agent import make_app

    runner = web.AppRunner(make_app(delay_ms))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


async def start_servers(args, variants: list[Variant], out: Path, progress: Progress) -> None:
    for v in variants:
        if args.echo_delay_ms:
            v.echo, v.url = await start_echo(args.echo_delay_ms)
        elif v.url is None:
            v.server = ServerProcess(v.config, v.overrides, out / f"server-{v.name}.log", workers=v.workers)
            progress.note(f"bench: starting the server for {v.name} ({v.config})")
            v.url = await v.server.start(args.startup_timeout_s)
            v.worker_urls = v.server.workers
        pid = v.server.pid if v.server else args.server_pid
        if pid:
            v.sampler = ResourceSampler(pid)
        elif v.echo and args.caller_procs != 0:  # the echo agent is this process (the callers are not)
            v.sampler = ResourceSampler(os.getpid(), tree=False)
        if v.sampler:
            v.sampler.start(lambda s=v.sampler: s.current)
        v.metrics = MetricsSampler(v.url)
        v.metrics.start(lambda m=v.metrics: m.current)


def _level_line(v: Variant, level: int, s: dict) -> str:
    line = (f"  {v.name} × {level}: p50 {s['v2v_p50_ms']} ms, p95 {s['v2v_p95_ms']} ms, "
            f"max gap {s['max_gap_ms']} ms, errors {s['errors']}")
    if s.get("refused_calls"):
        line += f", refused {s['refused_calls']} call(s) ({s['refused']} turns)"
    if s.get("worker_calls"):
        line += "; " + cluster.spread_line(s["worker_calls"])
    procs = f"{s['caller_procs']} process(es)" if s.get("caller_procs") else "in-process"
    return line + (f"; callers {procs}: CPU {s.get('caller_cpu_percent')} %, "
                   f"loop lag max {s.get('caller_loop_lag_max_ms')} ms")


async def bench(args: argparse.Namespace) -> dict:
    t_start = time.monotonic()
    deadline = t_start + args.deadline_s
    progress = Progress()
    out = Path(args.out or f"bench/out/{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus(args.corpus_cache, log=progress.note)
    corpus = corpus[:args.conversations] if args.conversations else corpus
    levels = [args.sustained] if args.sustained else sorted({int(x) for x in args.concurrency.split(",")})
    variants = variants_of(args)
    runs, notes, failed = [], [], set()
    lag = LoopLag()
    tmp = Path(tempfile.mkdtemp(prefix="bench-callers-"))
    corpus_path = save_conversations(corpus, tmp / "corpus.npz") if args.caller_procs != 0 else None
    try:
        await start_servers(args, variants, out, progress)
        if not args.no_warmup:
            for v in variants:
                await warm_up(args, v, corpus, progress, deadline, lag)
        last_seconds = 0.0
        for i, level in enumerate(levels):
            order = variants if i % 2 == 0 else variants[::-1]  # interleaved: ABBA, cancels drift
            for v in order:
                if v.name in failed and not args.full_sweep:
                    continue
                if not args.sustained and time.monotonic() + last_seconds * 1.2 > deadline:
                    notes.append(f"{v.name} × {level}: skipped, the time budget ({args.deadline_s:.0f} s) would run out")
                    continue
                run = await run_level(args, v, level, corpus, progress, deadline, lag, corpus_path, out / "callers",
                                      sustained_run=bool(args.sustained))
                last_seconds = run["seconds"]
                if not args.sustained and time.monotonic() > deadline:
                    notes.append(f"{v.name} × {level}: cut short by the time budget ({args.deadline_s:.0f} s)")
                runs.append(run)
                progress.note(_level_line(v, level, run["summary"]))
                if knee({level: run["summary"]}, args.threshold_ms, args.max_gap_ms) is None:
                    failed.add(v.name)
    finally:
        await lag.stop()
        for v in variants:
            for s in (v.sampler, v.metrics):
                if s:
                    await s.stop()
            if v.server:
                await v.server.stop()
            if v.echo:
                await v.echo.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
        if (out / "callers").is_dir() and not any((out / "callers").iterdir()):
            (out / "callers").rmdir()  # the caller processes' logs: kept only if they said something
    by_variant = {v.name: {r["concurrency"]: r["summary"] for r in runs if r["variant"] == v.name} for v in variants}
    result = {
        "command": " ".join(["python -m bench", *args.argv]),
        "transport": args.transport, "threshold_ms": args.threshold_ms, "max_gap_ms": args.max_gap_ms,
        "caller_procs": args.caller_procs,
        "variants": [{"name": v.name, "config": v.config, "overrides": v.overrides, "url": v.url,
                      **({"workers": v.workers or len(v.worker_urls), "worker_urls": v.worker_urls}
                         if v.worker_urls else {})} for v in variants],
        "levels": levels, "seconds": round(time.monotonic() - t_start, 1), "notes": notes,
        "knee": {} if args.sustained else {name: knee(s, args.threshold_ms, args.max_gap_ms)
                                           for name, s in by_variant.items()},
        "knee_all_admitted": {} if args.sustained else {name: knee(s, args.threshold_ms, args.max_gap_ms,
                                                                   refusals_fail=True)
                                                        for name, s in by_variant.items()},
        "ab": report.compare(runs, [v.name for v in variants]),
        "runs": runs,
    }
    if args.sustained and runs:
        result["sustained"] = {"callers": args.sustained, "duration_s": args.duration_s,
                               "variant": runs[0]["variant"], **runs[0]["sustained"]}
    paths = report.write(result, out)
    progress.note("bench: done in %.0f s" % result["seconds"])
    for p in paths:
        print(p)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        asyncio.run(bench(args))
    except KeyboardInterrupt:
        return 130
    except RuntimeError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    return 0
