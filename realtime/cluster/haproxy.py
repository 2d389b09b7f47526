"""HAProxy as the entry of a cluster: its config from ours, and the haproxy child process.

The config is deploy/haproxy/haproxy.cfg.tmpl filled in with the entry's address and one `server`
line per worker (its HTTP port, and the agent port where it reports its load: realtime/agent_check.py).
HAProxy runs in the foreground (-db) as our child; it dies with us (PR_SET_PDEATHSIG).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import string
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "haproxy" / "haproxy.cfg.tmpl"


class HAProxyError(RuntimeError):
    """HAProxy is missing, its config is refused, or it would not start."""


@dataclass(frozen=True)
class Backend:
    name: str
    host: str
    port: int
    agent_port: int


@dataclass(frozen=True)
class Checks:
    """How fast the entry notices a worker's state. A dead worker's new calls are retried on
    another worker at once (connection refused); it is marked DOWN after fall × inter. A worker's
    drain or weight is seen within agent_inter."""
    inter_ms: int = 1000
    fall: int = 2
    rise: int = 2
    agent_inter_ms: int = 1000
    check_timeout_ms: int = 2000  # a worker busy on 2 cores may answer /healthz slowly: not dead

    @property
    def detect_dead_s(self) -> float:
        return self.inter_ms * self.fall / 1000


def render_config(host: str, port: int, backends: list[Backend], stats_socket: Path,
                  checks: Checks = Checks(), retry_after_s: int = 5) -> str:
    servers = "\n".join(f"    server {b.name} {b.host}:{b.port} agent-addr {b.host} agent-port {b.agent_port}"
                        for b in backends)
    return string.Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        host=host, port=port, servers=servers, stats_socket=stats_socket, retries=max(1, len(backends)),
        inter_ms=checks.inter_ms, fall=checks.fall, rise=checks.rise, agent_inter_ms=checks.agent_inter_ms,
        check_timeout_ms=checks.check_timeout_ms, retry_after_s=retry_after_s)


def binary() -> str:
    path = shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy")
                                            if Path(p).is_file()), None)
    if path is None:
        raise HAProxyError("haproxy is not installed (Debian/Ubuntu: apt-get install haproxy; make run-cluster does)")
    return path


def check_config(path: Path) -> None:
    """`haproxy -c`: raises with HAProxy's own words if it refuses the file."""
    import subprocess

    result = subprocess.run([binary(), "-c", "-q", "-f", str(path)], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise HAProxyError(f"haproxy refused {path}: {(result.stderr or result.stdout).strip()[-1500:]}")


class HAProxyProcess:
    """haproxy -db -f <config>: started, restarted by the cluster's supervisor when it dies, and
    stopped last (after the workers drained: their tunnelled calls go through it)."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.config_path, self.log_path = config_path, log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        from core.processes import dying_with_parent  # the same guard the LLM child has
        import os

        check_config(self.config_path)
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - the child holds it
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *dying_with_parent([binary(), "-db", "-f", str(self.config_path)]), stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file, stderr=log_file)
        finally:
            log_file.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def wait(self) -> int:
        return await self.proc.wait()

    async def stop(self, grace_s: float = 5.0) -> None:
        """SIGUSR1 is HAProxy's soft stop (closes its listener, lets connections end); then SIGTERM."""
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGUSR1)
        try:
            await asyncio.wait_for(self.proc.wait(), grace_s)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


async def show_stat(stats_socket: Path) -> list[dict[str, str]]:
    """HAProxy's `show stat` over its admin socket, one dict per row (pxname, svname, status, scur,
    stot, weight, ...): the entry's view of each worker, for tests, the bench and operators."""
    reader, writer = await asyncio.open_unix_connection(str(stats_socket))
    try:
        writer.write(b"show stat\n")
        await writer.drain()
        text = (await reader.read()).decode("utf-8", "replace")
    finally:
        writer.close()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("# "):
        raise HAProxyError(f"unexpected answer from the stats socket: {text[:200]!r}")
    header = lines[0][2:].split(",")
    return [dict(zip(header, ln.split(","))) for ln in lines[1:]]

