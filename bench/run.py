"""`python -m bench` / `step-realtime bench`: N concurrent synthetic callers against a server,
voice-to-voice latency measured at the callers, a concurrency sweep that finds the knee, and an
A/B (speculation on/off, or --vs another config) interleaved on the same corpus.
"""
from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

from bench import caller_webrtc, caller_ws, report
from bench.corpus import Conversation, load_corpus
from bench.measure import analyze
from bench.stats import knee, summarize
from bench.mic import ScriptOptions
from bench.server import ResourceSampler, ServerProcess

CALLERS = {"webrtc": caller_webrtc, "ws": caller_ws}


@dataclass
class Variant:
    name: str
    config: str | None
    overrides: dict = field(default_factory=dict)
    server: ServerProcess | None = None
    sampler: ResourceSampler | None = None
    url: str | None = None
    echo: object = None  # the in-process echo agent's runner


class LoopLag:
    """How late the callers' own event loop wakes up. The callers' clock readings are only as
    good as this: a loaded machine shows here, and the report says so next to the latencies."""

    def __init__(self, period_s: float = 0.01, stall_s: float = 0.02) -> None:
        self.period, self.stall_s, self.lags = period_s, stall_s, []
        self.stalls: list[tuple[float, float]] = []  # (from, to) when the loop was late > stall_s
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(self.period)
            now = time.monotonic()
            lag = now - t - self.period
            self.lags.append(lag)
            if lag > self.stall_s:
                self.stalls.append((now - lag, now))

    def take(self) -> dict:
        lags, self.lags = self.lags, []
        if not lags:
            return {}
        return {"caller_loop_lag_max_ms": round(max(lags) * 1000, 1),
                "caller_loop_lag_p99_ms": round(float(np.percentile(lags, 99)) * 1000, 1)}

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class Progress:
    def __init__(self, stream=sys.stderr) -> None:
        self.stream, self.t0 = stream, time.monotonic()
        self.tty = stream.isatty()
        self.label, self.done, self.total, self.last = "", 0, 0, None

    def level(self, label: str, total: int) -> None:
        self.label, self.done, self.total, self.last = label, 0, total, None
        self._show()

    def turn(self, v2v_ms: float | None) -> None:
        self.done += 1
        self.last = v2v_ms
        self._show()

    def _show(self) -> None:
        last = "no reply" if self.last is None else f"{self.last:.0f} ms"
        line = (f"[{time.monotonic() - self.t0:5.0f}s] {self.label}: turn {self.done}/~{self.total}"
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
    p.add_argument("--server-pid", type=int, help="with --url: sample this process's CPU/RSS")
    p.add_argument("--echo-delay-ms", type=float,
                   help="bench the built-in echo agent (replies this long after speech ends) to check the bench")
    p.add_argument("--transport", choices=sorted(CALLERS), default="webrtc")
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
    p.add_argument("--out", help="output folder (default: bench/out/<date-time>)")
    p.add_argument("--corpus-cache", type=Path, help="corpus cache folder")
    return p.parse_args(argv)


def variants_of(args: argparse.Namespace) -> list[Variant]:
    if args.url:
        return [Variant("url", None, url=args.url)]
    if args.echo_delay_ms:
        return [Variant(f"echo-{args.echo_delay_ms:g}ms", None)]
    if args.vs:
        return [Variant(Path(args.config).stem, args.config), Variant(Path(args.vs).stem, args.vs)]
    if args.ab == "speculation":
        return [Variant("speculation-on", args.config, {"controller.speculation": True}),
                Variant("speculation-off", args.config, {"controller.speculation": False})]
    return [Variant(Path(args.config).stem, args.config)]


async def run_caller(transport: str, url: str, caller: int, convs: list[Conversation], opts: ScriptOptions,
                     max_turns: int | None, deadline: float, progress: Progress, lag: LoopLag) -> tuple[list, list[str]]:
    """One synthetic caller: calls once per conversation, one after the other."""
    records, errors = [], []
    for n, conv in enumerate(convs):
        if time.monotonic() > deadline:
            break
        try:
            timings, heard, events = await CALLERS[transport].call(url, conv, opts, max_turns,
                                                                   seed=caller * 1000 + n, progress=progress.turn)
            records += analyze(caller, timings, heard.chunks, events, lag.stalls)
        except (ConnectionError, OSError, asyncio.TimeoutError, aiohttp.ClientError) as exc:
            errors.append(f"caller {caller}, {conv.name}: {type(exc).__name__}: {exc}")
    return records, errors


async def run_level(args, variant: Variant, level: int, corpus: list[Conversation], progress: Progress,
                    deadline: float, lag: LoopLag) -> dict:
    opts = ScriptOptions(reply_timeout_s=args.reply_timeout_s, deadline=deadline)
    avg_turns = sum(len(c.turns[:args.max_turns] if args.max_turns else c.turns) for c in corpus) / len(corpus)
    per_caller = max(1, math.ceil(args.min_turns / (level * avg_turns)))
    plan = [[corpus[(caller + k * level) % len(corpus)] for k in range(per_caller)] for caller in range(level)]
    progress.level(f"{variant.name} × {level} caller(s)", round(level * per_caller * avg_turns))
    tag = f"{variant.name}/{level}"
    if variant.sampler:
        variant.sampler.current = tag
    t0 = time.monotonic()
    lag.take()

    async def staggered(caller: int):
        await asyncio.sleep(caller * 0.37)  # callers do not all speak in lockstep
        return await run_caller(args.transport, variant.url, caller, plan[caller], opts, args.max_turns,
                                deadline, progress, lag)

    results = await asyncio.gather(*(staggered(c) for c in range(level)))
    if variant.sampler:
        variant.sampler.current = ""
    records = [r for recs, _ in results for r in recs]
    errors = [e for _, errs in results for e in errs]
    for e in errors:
        progress.note("  " + e)
    summary = summarize(records)
    summary["call_errors"] = len(errors)
    summary.update(lag.take())
    summary["load_average_1m"] = round(os.getloadavg()[0], 2)
    if errors:
        summary["errors"] += len(errors)
    return {"variant": variant.name, "concurrency": level, "seconds": round(time.monotonic() - t0, 1),
            "summary": summary, "server": variant.sampler.summary(tag) if variant.sampler else {},
            "call_errors": errors, "turns": [r.as_dict() for r in records]}


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
            v.server = ServerProcess(v.config, v.overrides, out / f"server-{v.name}.log")
            progress.note(f"bench: starting the server for {v.name} ({v.config})")
            v.url = await v.server.start(args.startup_timeout_s)
        pid = v.server.pid if v.server else args.server_pid
        if pid:
            v.sampler = ResourceSampler(pid)
            v.sampler.start(lambda s=v.sampler: s.current)


async def bench(args: argparse.Namespace) -> dict:
    t_start = time.monotonic()
    deadline = t_start + args.deadline_s
    progress = Progress()
    out = Path(args.out or f"bench/out/{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus(args.corpus_cache, log=progress.note)
    corpus = corpus[:args.conversations] if args.conversations else corpus
    levels = sorted({int(x) for x in args.concurrency.split(",")})
    variants = variants_of(args)
    runs, notes, failed = [], [], set()
    lag = LoopLag()
    try:
        await start_servers(args, variants, out, progress)
        if not args.no_warmup:  # first model calls are slow (lazy loads, caches): not measured
            warm = Conversation(corpus[0].name, corpus[0].turns[:1])
            for v in variants:
                progress.level(f"{v.name} warm-up", 1)
                await run_caller(args.transport, v.url, 0, [warm], ScriptOptions(reply_timeout_s=30, deadline=deadline),
                                 None, deadline, progress, lag)
        last_seconds = 0.0
        for i, level in enumerate(levels):
            order = variants if i % 2 == 0 else variants[::-1]  # interleaved: ABBA, cancels drift
            for v in order:
                if v.name in failed and not args.full_sweep:
                    continue
                if time.monotonic() + last_seconds * 1.2 > deadline:
                    notes.append(f"{v.name} × {level}: skipped, the time budget ({args.deadline_s:.0f} s) would run out")
                    continue
                run = await run_level(args, v, level, corpus, progress, deadline, lag)
                last_seconds = run["seconds"]
                if time.monotonic() > deadline:
                    notes.append(f"{v.name} × {level}: cut short by the time budget ({args.deadline_s:.0f} s)")
                runs.append(run)
                s = run["summary"]
                progress.note(f"  {v.name} × {level}: p50 {s['v2v_p50_ms']} ms, p95 {s['v2v_p95_ms']} ms, "
                              f"max gap {s['max_gap_ms']} ms, errors {s['errors']}")
                if knee({level: s}, args.threshold_ms, args.max_gap_ms) is None:
                    failed.add(v.name)
    finally:
        await lag.stop()
        for v in variants:
            if v.sampler:
                await v.sampler.stop()
            if v.server:
                await v.server.stop()
            if v.echo:
                await v.echo.cleanup()
    result = {
        "command": " ".join(["python -m bench", *args.argv]),
        "transport": args.transport, "threshold_ms": args.threshold_ms, "max_gap_ms": args.max_gap_ms,
        "variants": [{"name": v.name, "config": v.config, "overrides": v.overrides, "url": v.url} for v in variants],
        "levels": levels, "seconds": round(time.monotonic() - t_start, 1), "notes": notes,
        "knee": {v.name: knee({r["concurrency"]: r["summary"] for r in runs if r["variant"] == v.name},
                              args.threshold_ms, args.max_gap_ms) for v in variants},
        "ab": report.compare(runs, [v.name for v in variants]),
        "runs": runs,
    }
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
