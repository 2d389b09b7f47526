"""The server under test: started as a subprocess on loopback (or reached by --url), and its CPU
and memory sampled (psutil, the process and all its children: e.g. a bundled LLM server)."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

from bench.cluster import WORKER_LINE
from core.processes import dying_with_parent
from bench.measure import auth_headers

LISTENING = re.compile(r"listening on (http://\S+?)/? ")


def config_with(path: str, overrides: dict) -> str:
    """A copy of the config with dotted-key overrides (e.g. controller.speculation=false)."""
    if not overrides:
        return path
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    fd, out = tempfile.mkstemp(prefix="bench-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(raw, f)
    return out


class ServerProcess:
    """`python -m realtime.cli serve --config X --port 0`; the URL is read from its banner. With
    `workers`: `--workers N --haproxy` (bench/cluster.py), the URL is HAProxy's entry and
    `self.workers` maps each worker's name to its own URL."""

    def __init__(self, config: str, overrides: dict | None = None, log_path: Path | None = None,
                 workers: int = 0) -> None:
        self.config = config_with(config, overrides or {})
        self.n_workers = workers
        self.workers: dict[str, str] = {}
        self._temp = self.config != config
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="bench-server-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None

    async def start(self, timeout_s: float = 300.0) -> str:
        log = open(self.log_path, "w")  # noqa: SIM115 - kept open for the child's lifetime
        self.proc = subprocess.Popen(dying_with_parent(  # a killed bench (timeout, pkill) leaves no server behind
            [sys.executable, "-m", "realtime.cli", "serve", "--config", self.config,
             "--host", "127.0.0.1", "--port", "0", "--log-level", "warning",
             "--set", "server.auth.enabled=false",  # a loopback server the bench alone talks to
             *(["--workers", str(self.n_workers), "--haproxy"] if self.n_workers else [])]),
            stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = await asyncio.wait_for(loop.run_in_executor(None, self.proc.stdout.readline),
                                          max(1.0, deadline - time.monotonic()))
            if not line and self.proc.poll() is not None:
                break
            if m := WORKER_LINE.match(line):
                self.workers[m.group(1)] = m.group(2)
            if m := LISTENING.search(line):
                self.url = m.group(1)
                loop.run_in_executor(None, self._drain)
                return self.url
        tail = self.log_path.read_text(errors="replace")[-2000:]
        await self.stop()
        raise RuntimeError(f"the server did not start ({self.config}); its log ends:\n{tail}")

    def _drain(self) -> None:
        for _ in self.proc.stdout:  # keep its stdout from filling up
            pass

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: its children go too
            for _ in range(100):
                if self.proc.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            else:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self._temp:
            Path(self.config).unlink(missing_ok=True)


class ResourceSampler:
    """CPU (% of one core, summed over the process tree) and RSS (MiB) every `period_s`."""

    def __init__(self, pid: int, period_s: float = 0.5, tree: bool = True) -> None:
        self.pid, self.period, self.tree = pid, period_s, tree
        self.current = ""  # tag for the samples: which variant and level is running
        self.samples: list[dict] = []
        self._task: asyncio.Task | None = None
        self._procs: dict[int, psutil.Process] = {}

    def _tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.pid)
        procs = [root, *root.children(recursive=True)] if self.tree else [root]
        for p in procs:  # reuse Process objects: cpu_percent() measures since the last call
            self._procs.setdefault(p.pid, p)
        return [self._procs[p.pid] for p in procs]

    def sample(self, tag: str = "") -> None:
        cpu = rss = rss_children = 0.0
        try:
            for p in self._tree():
                try:
                    cpu += p.cpu_percent(None)
                    mem = p.memory_info().rss
                    rss += mem
                    rss_children += mem if p.pid != self.pid else 0
                except psutil.Error:
                    pass
        except psutil.Error:
            return
        # the tree, and apart the server and its children (the LLM server): a leak shows in one of them
        self.samples.append({"t": time.monotonic(), "cpu_percent": round(cpu, 1),
                             "rss_mib": round(rss / 2**20, 1), "rss_server_mib": round((rss - rss_children) / 2**20, 1),
                             "rss_children_mib": round(rss_children / 2**20, 1), "tag": tag})

    async def _run(self, tag_of) -> None:
        while True:
            self.sample(tag_of())
            await asyncio.sleep(self.period)

    def start(self, tag_of=lambda: "") -> None:
        self.sample()  # primes cpu_percent
        self._task = asyncio.create_task(self._run(tag_of))

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def summary(self, tag: str) -> dict:
        rows = [s for s in self.samples if s["tag"] == tag]
        if not rows:
            return {}
        cpu = sorted(s["cpu_percent"] for s in rows)
        return {"cpu_mean_percent": round(sum(cpu) / len(cpu), 1), "cpu_max_percent": cpu[-1],
                "rss_max_mib": max(s["rss_mib"] for s in rows), "rss_first_mib": rows[0]["rss_mib"],
                "rss_last_mib": rows[-1]["rss_mib"], "samples": len(rows)}


class MetricsSampler:
    """GET /metrics.json every `period_s`: the server's model queues (its "scheduler" key: lanes'
    queue depth per kind, wait times, work done; the admission load) and its active sessions.
    A server without the key (older ones, the echo agent) gives samples without it."""

    def __init__(self, url: str, period_s: float = 1.0) -> None:
        self.url, self.period = url.rstrip("/") + "/metrics.json", period_s
        self.current = ""
        self.samples: list[dict] = []
        self._task: asyncio.Task | None = None

    async def _run(self, tag_of) -> None:
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=max(2.0, self.period)),
                                         headers=auth_headers()) as http:
            while True:
                t = time.monotonic()
                try:
                    async with http.get(self.url) as resp:
                        data = await resp.json(content_type=None) if resp.status == 200 else None
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                    data = None
                if isinstance(data, dict):
                    sessions = data.get("sessions")
                    self.samples.append({
                        "t": time.monotonic(), "tag": tag_of(),
                        "scheduler": data.get("scheduler") if isinstance(data.get("scheduler"), dict) else None,
                        "active_sessions": sessions.get("active") if isinstance(sessions, dict) else None,
                        "process": data.get("process") if isinstance(data.get("process"), dict) else None})
                await asyncio.sleep(max(0.0, self.period - (time.monotonic() - t)))

    def start(self, tag_of=lambda: "") -> None:
        self._task = asyncio.create_task(self._run(tag_of))

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def of(self, tag: str) -> list[dict]:
        return [s for s in self.samples if s["tag"] == tag]

    def summary(self, tag: str) -> dict:
        return scheduler_summary(self.of(tag))


KINDS = ("final", "speculative", "warmup")  # known kinds first, in this order; others after


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def kinds_of(lane: dict) -> list[str]:
    seen = {k for k in lane.get("queued", {})} | {k for k in lane.get("wait_ms", {})}
    return [k for k in KINDS if k in seen] + sorted(seen - set(KINDS))


def scheduler_summary(samples: list[dict]) -> dict:
    """Per lane over a level's /metrics.json samples: queue depth per kind (max, mean), running jobs,
    the server's wait percentiles per kind as it reported them at the end of the level, and the
    work done during the level (differences of its counters: jobs, dropped, batches, busy time).
    {} if no sample had the "scheduler" key."""
    rows = [s for s in samples if isinstance(s.get("scheduler"), dict)]
    if not rows:
        return {}
    lanes: dict[str, dict] = {}
    names: list[str] = []
    for s in rows:
        for name in (s["scheduler"].get("lanes") or {}):
            if name not in names:
                names.append(name)
    span = rows[-1]["t"] - rows[0]["t"]
    for name in names:
        seq = [s["scheduler"]["lanes"][name] for s in rows
               if isinstance((s["scheduler"].get("lanes") or {}).get(name), dict)]
        if not seq:
            continue
        first, last = seq[0], seq[-1]
        kinds: list[str] = []
        for lane in seq:
            kinds += [k for k in kinds_of(lane) if k not in kinds]
        queued = {}
        for kind in kinds:
            depth = [_num((lane.get("queued") or {}).get(kind)) or 0.0 for lane in seq]
            queued[kind] = {"max": max(depth), "mean": round(sum(depth) / len(depth), 2)}
        totals = [sum(_num(v) or 0.0 for v in (lane.get("queued") or {}).values()) for lane in seq]
        running = [_num(lane.get("running")) or 0.0 for lane in seq]
        wait = {k: {q: _num(v) for q, v in w.items()} for k, w in (last.get("wait_ms") or {}).items()
                if isinstance(w, dict)}
        out = {"workers": last.get("workers"), "samples": len(seq),
               "queued": queued, "queued_total_max": max(totals),
               "queued_total_mean": round(sum(totals) / len(totals), 2),
               "running_max": max(running), "running_mean": round(sum(running) / len(running), 2),
               "wait_ms": wait, "batch_size_mean": _num(last.get("batch_size_mean"))}
        for counter in ("jobs", "dropped", "batches", "busy_s"):
            a, b = _num(first.get(counter)), _num(last.get(counter))
            out[counter] = None if a is None or b is None else round(b - a, 2)
        # The stage's own counts (Whisper's solo encodes, loop retries...) during the level; a
        # counter a stage adds on first use is missing from the earlier samples: it started at 0.
        before, after = first.get("counters") or {}, last.get("counters") or {}
        out["counters"] = {k: round(_num(v) - (_num(before.get(k)) or 0.0), 2)
                           for k, v in after.items() if _num(v) is not None}
        workers = _num(last.get("workers")) or 1.0
        out["busy_percent"] = (round(out["busy_s"] / (span * workers) * 100, 1)
                               if out["busy_s"] is not None and span > 0 else None)
        lanes[name] = out
    loads = [s["scheduler"].get("load") for s in rows if isinstance(s["scheduler"].get("load"), dict)]
    return {"samples": len(rows), "seconds": round(span, 1), "lanes": lanes, "load": load_summary(loads)}


def load_summary(loads: list[dict]) -> dict:
    """The server's admission view over a level ("scheduler"."load" of /metrics.json): how often it was
    admitting, why not, its capacity estimate, the CPU it measures per session, and how many calls
    it refused (its own counter, to compare with the callers' count)."""
    if not loads:
        return {}

    def series(*keys):
        out = []
        for x in loads:
            v = next((_num(x.get(k)) for k in keys if _num(x.get(k)) is not None), None)
            if v is not None:
                out.append(v)
        return out

    admitting = [x.get("admitting") for x in loads if isinstance(x.get("admitting"), bool)]
    capacity = series("capacity_sessions", "estimated_sessions")
    cpu = series("cpu_util")
    refused = series("refused")
    reasons: dict[str, int] = {}
    for x in loads:
        if x.get("admitting") is False and x.get("reason"):
            reasons[str(x["reason"])] = reasons.get(str(x["reason"]), 0) + 1
    last = loads[-1]
    return {"admitting_share": round(sum(admitting) / len(admitting), 2) if admitting else None,
            "not_admitting_reasons": reasons,
            "capacity_sessions_min": min(capacity) if capacity else None,
            "capacity_sessions_last": capacity[-1] if capacity else None,
            "admitted_sessions_max": max(series("admitted_sessions", "active_sessions"), default=None),
            "active_sessions_max": max(series("active_sessions"), default=None),
            "session_cpu_last": _num(last.get("session_cpu")),
            "measured_session_cpu_last": _num(last.get("measured_session_cpu")),
            "cpu_util_mean": round(sum(cpu) / len(cpu), 3) if cpu else None,
            "cpu_util_max": max(cpu) if cpu else None,
            "final_wait_p95_ms_max": max(series("final_wait_p95_ms"), default=None),
            "refused": round(refused[-1] - refused[0]) if len(refused) > 1 else None}
