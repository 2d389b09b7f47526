"""One worker of a cluster: a whole single-process server (`step-realtime serve`) as our child, on
its own HTTP port and agent port, started again when it dies.

A worker's calls live and die with it: when it is killed, its WebSocket calls see their
connection close (HAProxy passes the close on) and its WebRTC peers stop receiving media; nothing
is shared with the other workers but the LLM server (and the entry), so they go on. The
supervisor starts it again on the same ports (HAProxy's config names them), after a backoff that
doubles while restarts keep failing.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field

import aiohttp

log = logging.getLogger(__name__)
STABLE_S = 60.0  # a worker up this long before it died is restarted after the shortest wait


@dataclass
class WorkerSpec:
    name: str  # w0, w1, ...: HAProxy's server name too
    host: str
    port: int
    agent_port: int
    config_path: str
    overrides: list[str] = field(default_factory=list)  # --set KEY=VALUE, ours after the user's
    log_level: str = "info"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        sets = [*self.overrides, f"server.agent_port={self.agent_port}"]
        return [sys.executable, "-m", "realtime.cli", "serve", "--config", self.config_path,
                "--host", self.host, "--port", str(self.port), "--log-level", self.log_level,
                *(arg for s in sets for arg in ("--set", s))]


class WorkerProcess:
    def __init__(self, spec: WorkerSpec, on_up=None, restart_backoff_s: tuple[float, float] = (1.0, 30.0),
                 startup_timeout_s: float = 600.0) -> None:
        self.spec = spec
        self.on_up = on_up or (lambda worker: None)  # called each time it is up (first start, restarts)
        self.restart_backoff_s = restart_backoff_s
        self.startup_timeout_s = startup_timeout_s
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.starts = 0  # times it came up (1 + restarts)
        self.stopping = False
        self.signalled: int | None = None  # the stop signal sent, once
        self._supervisor: asyncio.Task | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self) -> None:
        """Start it and wait until it serves HTTP (its stages are built); then keep it running."""
        await self._launch()
        self._supervisor = asyncio.create_task(self._supervise(), name=f"worker-{self.spec.name}")

    async def _launch(self) -> None:
        from core.processes import dying_with_parent  # a worker must not outlive the cluster

        # The worker's stdout (its banner) goes to our stderr: our stdout says what the cluster is.
        self.proc = await asyncio.create_subprocess_exec(
            *dying_with_parent(self.spec.command()), stdin=asyncio.subprocess.DEVNULL, stdout=sys.stderr.fileno())
        await self._wait_up()
        self.starts += 1
        self.on_up(self)

    async def _wait_up(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as http:
            while True:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"worker {self.spec.name} exited with {self.proc.returncode} while starting")
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with http.get(f"{self.spec.url}/healthz") as r:
                        if r.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker {self.spec.name} not up after {self.startup_timeout_s:.0f} s")
                with contextlib.suppress(asyncio.TimeoutError):  # wakes early if it exits
                    await asyncio.wait_for(asyncio.shield(self.proc.wait()), 0.25)

    async def _supervise(self) -> None:
        first, longest = self.restart_backoff_s
        backoff = first
        while not self.stopping:
            up_since = time.monotonic()
            code = await self.proc.wait()
            if self.stopping:
                return
            backoff = first if time.monotonic() - up_since > STABLE_S else min(backoff * 2, longest)
            log.error("worker %s (pid %s) exited with %s; its calls ended; restarting in %.1f s",
                      self.spec.name, self.proc.pid, code, backoff)
            while not self.stopping:
                await asyncio.sleep(backoff)
                if self.stopping:
                    return
                try:
                    await self._launch()
                except Exception as exc:
                    await self._kill()
                    backoff = min(backoff * 2, longest)
                    log.error("worker %s restart failed; next try in %.1f s: %s", self.spec.name, backoff, exc)
                    continue
                self.restarts += 1
                break

    def signal(self, sig: int) -> None:
        if sig != signal.SIGKILL:
            self.signalled = sig
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def stop(self, sig: int, timeout_s: float) -> int | None:
        """Send `sig` (SIGTERM: drain; SIGINT: at once) unless a stop signal was sent already (a
        second one would cut the drain short), wait up to timeout_s, then SIGKILL."""
        self.stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self.proc is None:
            return None
        if self.signalled is None:
            self.signal(sig)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout_s)
        except asyncio.TimeoutError:
            log.warning("worker %s did not stop in %.0f s: killed", self.spec.name, timeout_s)
            return await self._kill()

    async def _kill(self) -> int | None:
        if self.proc is None:
            return None
        self.signal(signal.SIGKILL)
        return await self.proc.wait()
