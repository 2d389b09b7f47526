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
    """`python -m realtime.cli serve --config X --port 0`; the URL is read from its banner."""

    def __init__(self, config: str, overrides: dict | None = None, log_path: Path | None = None) -> None:
        self.config = config_with(config, overrides or {})
        self._temp = self.config != config
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="bench-server-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None

    async def start(self, timeout_s: float = 300.0) -> str:
        log = open(self.log_path, "w")  # noqa: SIM115 - kept open for the child's lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "realtime.cli", "serve", "--config", self.config,
             "--host", "127.0.0.1", "--port", "0", "--log-level", "warning"],
            stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = await asyncio.wait_for(loop.run_in_executor(None, self.proc.stdout.readline),
                                          max(1.0, deadline - time.monotonic()))
            if not line and self.proc.poll() is not None:
                break
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

    def __init__(self, pid: int, period_s: float = 0.5) -> None:
        self.pid, self.period = pid, period_s
        self.current = ""  # tag for the samples: which variant and level is running
        self.samples: list[dict] = []
        self._task: asyncio.Task | None = None
        self._procs: dict[int, psutil.Process] = {}

    def _tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.pid)
        procs = [root, *root.children(recursive=True)]
        for p in procs:  # reuse Process objects: cpu_percent() measures since the last call
            self._procs.setdefault(p.pid, p)
        return [self._procs[p.pid] for p in procs]

    def sample(self, tag: str = "") -> None:
        cpu = rss = 0.0
        try:
            for p in self._tree():
                try:
                    cpu += p.cpu_percent(None)
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            return
        self.samples.append({"t": time.monotonic(), "cpu_percent": round(cpu, 1),
                             "rss_mib": round(rss / 2**20, 1), "tag": tag})

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
                "rss_max_mib": max(s["rss_mib"] for s in rows), "samples": len(rows)}
