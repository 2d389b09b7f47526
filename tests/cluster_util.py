"""A real `step-realtime serve --workers N --haproxy` for the cluster tests: the parent process, its
worker processes and its HAProxy child, with the entry's view of the workers from HAProxy's stats
socket and each worker's own from its /metrics.json."""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import aiohttp
import pytest

from core.processes import dying_with_parent
from realtime.cluster.haproxy import show_stat
from tests.realtime_util import FAKE_CONFIG, REPO, WAIT

WORKER_LINE = re.compile(r"^worker (w\d+): (http://\S+?)/ agent \S+:(\d+) pid (\d+)(?: \(restart (\d+)\))?")
ENTRY_LINE = re.compile(r"listening on (http://\S+?)/ ")
STATS_LINE = re.compile(r"^haproxy: pid (\d+) config \S+ stats (\S+) ")


def need_haproxy() -> None:
    """A missing haproxy skips locally and fails under CI=true (tests/conftest.py)."""
    if not (shutil.which("haproxy") or shutil.which("/usr/sbin/haproxy")):
        pytest.skip("haproxy is not installed (make .stamps/haproxy, or apt-get install haproxy)")


@dataclass
class Worker:
    name: str
    url: str
    agent_port: int
    pid: int
    restarts: int = 0


class Cluster:
    def __init__(self, workers: int = 2, sets: list[str] | None = None) -> None:
        need_haproxy()
        self.workers: dict[str, Worker] = {}
        self.entry: str | None = None
        self.stats_socket: str | None = None
        self.haproxy_pid: int | None = None
        self.lines: list[str] = []
        args = [sys.executable, "-m", "realtime.cli", "serve", "--config", str(FAKE_CONFIG), "--port", "0",
                "--workers", str(workers), "--haproxy", "--log-level", "warning"]
        for s in sets or []:
            args += ["--set", s]
        # Dies with the test process (its workers and HAProxy with it), whatever happens to the test.
        self.proc = subprocess.Popen(dying_with_parent(args), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip())
                if m := WORKER_LINE.match(line):
                    self.workers[m.group(1)] = Worker(m.group(1), m.group(2), int(m.group(3)), int(m.group(4)),
                                                      int(m.group(5) or 0))
                elif m := STATS_LINE.match(line):
                    self.haproxy_pid, self.stats_socket = int(m.group(1)), m.group(2)
                elif m := ENTRY_LINE.search(line):
                    self.entry = m.group(1)
                self._changed.notify_all()

    def wait_for(self, predicate, what: str, timeout: float = 120.0) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: predicate() or self.proc.poll() is not None, timeout):
                raise AssertionError(f"timed out waiting for {what}; output: {self.lines}")
            if not predicate():
                raise AssertionError(f"the cluster exited ({self.proc.returncode}) before {what}: {self.lines}")

    async def start(self) -> "Cluster":
        await asyncio.to_thread(self.wait_for, lambda: self.entry is not None, "the entry")
        await self.until(lambda s: all(s[w]["status"] == "UP" for w in self.workers), "every worker UP")
        return self

    async def stat(self) -> dict[str, dict[str, str]]:
        rows = await show_stat(self.stats_socket)
        return {r["svname"]: r for r in rows if r["pxname"] == "step_workers" and r["svname"] in self.workers}

    async def until(self, predicate, what: str, timeout: float = 60.0) -> dict:
        """Polls HAProxy's view until `predicate(stat)` holds (agent-inter and inter are 1 s)."""
        deadline = time.monotonic() + timeout
        while True:
            stat = await self.stat()
            if len(stat) == len(self.workers) and predicate(stat):
                return stat
            if time.monotonic() > deadline:
                raise AssertionError(f"HAProxy never saw {what}: "
                                     f"{ {k: (v['status'], v['weight']) for k, v in stat.items()} }")
            await asyncio.sleep(0.2)

    async def sessions(self, http: aiohttp.ClientSession) -> dict[str, int]:
        """Sessions in progress on each worker, asked of the worker itself."""
        out = {}
        for name, w in self.workers.items():
            async with http.get(f"{w.url}/metrics.json") as r:
                out[name] = (await r.json())["sessions"]["active"]
        return out

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(WAIT * 2)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
