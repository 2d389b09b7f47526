"""`step-realtime serve --workers N [--haproxy]`: N single-process servers on one box behind one entry.

Each worker is a whole server (realtime/app.py) in its own process, on port worker_port + i, with
its own admission (its share of the box's cores: server.admission.cores) and an agent-check port
(agent_port + i, realtime/agent_check.py) where it tells HAProxy its spare capacity or `drain`.
With --haproxy the entry is an HAProxy child on server.port (realtime/cluster/haproxy.py).

Models on one box: the LLM is the one thing shared. With the bundled llama-server (llm.impl openai,
base_url null) this parent starts ONE llama-server (supervised: restarted when it dies) and every
worker gets its URL as llm.base_url, so there is one copy of the weights and one continuous batch
across all calls of the box (llama.cpp's slots are shared, not split). The other stages (VAD,
Whisper, piper, Smart Turn) are small and load in each worker; a config that names remote stages
(a model tier on Ray Serve, an LLM on vLLM) is passed to every worker as it is.

Signals: SIGTERM drains every worker (each finishes its calls for up to server.drain_grace_s),
then stops HAProxy (tunnelled calls pass through it until then) and the LLM server; SIGINT stops
at once. A worker that dies is started again on its ports.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path

from realtime.cluster.haproxy import Backend, Checks, HAProxyProcess, render_config
from realtime.cluster.workers import WorkerProcess, WorkerSpec
from realtime.config import Config

__all__ = ["Checks", "WorkerSpec", "haproxy_config", "plan_ports", "run_cluster"]

log = logging.getLogger(__name__)


def plan_ports(cfg: Config, workers: int, worker_port: int | None, agent_port: int | None) -> tuple[int, list[int], list[int]]:
    """(entry port, worker ports, agent ports). server.port 0: every port free (tests)."""
    from llm.llama_server import free_port

    host = cfg.server.host
    if cfg.server.port == 0 and worker_port is None:
        return free_port(host), [free_port(host) for _ in range(workers)], [free_port(host) for _ in range(workers)]
    entry = cfg.server.port or free_port(host)
    base = worker_port if worker_port is not None else entry + 1
    agents = agent_port if agent_port is not None else base + 1000
    return entry, [base + i for i in range(workers)], [agents + i for i in range(workers)]


def worker_cores(workers: int) -> float:
    """Each worker's share of the cores this process may run on, for its admission."""
    return round(len(os.sched_getaffinity(0)) / workers, 3)


def haproxy_config(cfg: Config, entry_port: int, specs: list[WorkerSpec], stats_socket: Path,
                   checks: Checks = Checks()) -> str:
    return render_config(cfg.server.host, entry_port,
                         [Backend(s.name, s.host, s.port, s.agent_port) for s in specs], stats_socket, checks,
                         cfg.server.admission.retry_after_s)


async def _shared_llm(cfg: Config):
    """The one bundled llama-server for all workers (None when the config names a remote LLM)."""
    if cfg.llm.impl != "openai" or cfg.llm.options().get("base_url") is not None:
        return None
    from core.config import validate_options
    from llm.openai_chat import Options, bundled_server

    server = bundled_server(validate_options(Options, "llm", cfg.llm.options()), cfg.cache_path)
    await server.start()
    return server


async def run_cluster(cfg: Config, config_path: str, overrides: list[str], workers: int, *, with_haproxy: bool,
                      worker_port: int | None = None, agent_port: int | None = None,
                      log_level: str = "info", checks: Checks = Checks()) -> None:
    entry_port, ports, agents = plan_ports(cfg, workers, worker_port, agent_port)
    host = cfg.server.host
    run_dir: Path | None = None  # HAProxy's config, stats socket and log
    llm = await _shared_llm(cfg)
    ours = [f"server.admission.cores={worker_cores(workers)}"]
    if llm is not None:
        ours.append(f"llm.base_url={llm.base_url}")
    user_cores = any(o.startswith("server.admission.cores=") for o in overrides)
    specs = [WorkerSpec(f"w{i}", host, ports[i], agents[i], config_path,
                        [*overrides, *(o for o in ours if not (user_cores and o.startswith("server.admission.cores=")))],
                        log_level) for i in range(workers)]

    def announce(worker: WorkerProcess) -> None:
        s = worker.spec
        print(f"worker {s.name}: {s.url}/ agent {s.host}:{s.agent_port} pid {worker.pid}"
              + (f" (restart {worker.starts - 1})" if worker.starts > 1 else ""), flush=True)

    procs = [WorkerProcess(s, on_up=announce) for s in specs]
    proxy: HAProxyProcess | None = None
    try:
        await asyncio.gather(*(p.start() for p in procs))
        shown = f"[{host}]" if ":" in host else host
        if with_haproxy:
            run_dir = Path(tempfile.mkdtemp(prefix="step-realtime-cluster-"))
            stats = run_dir / "haproxy.sock"
            path = run_dir / "haproxy.cfg"
            path.write_text(haproxy_config(cfg, entry_port, specs, stats, checks), encoding="utf-8")
            proxy = HAProxyProcess(path, run_dir / "haproxy.log")
            await proxy.start()
            await _wait_listening(host, entry_port, proxy)
            print(f"haproxy: pid {proxy.pid} config {path} stats {stats} log {run_dir / 'haproxy.log'}", flush=True)
            print(f"step-realtime listening on http://{shown}:{entry_port}/ (HAProxy entry, {workers} workers; "
                  f"Realtime WebSocket: ws://{shown}:{entry_port}/v1/realtime)", flush=True)
        else:
            print(f"step-realtime cluster: {workers} workers (no entry: put a load balancer in front)", flush=True)
        await _until_signalled(procs, proxy)
    finally:
        await _stop_all(procs, proxy, llm, cfg.server.drain_grace_s)
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)


async def _wait_listening(host: str, port: int, proxy: HAProxyProcess, timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        if proxy.proc.returncode is not None:
            raise RuntimeError(f"haproxy exited with {proxy.proc.returncode}; see {proxy.log_path}")
        try:
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        except OSError:
            if loop.time() > deadline:
                raise RuntimeError(f"haproxy not listening on {host}:{port} after {timeout_s:.0f} s") from None
            await asyncio.sleep(0.1)


async def _until_signalled(procs: list[WorkerProcess], proxy: HAProxyProcess | None) -> None:
    """Returns on SIGTERM (the workers drain) or SIGINT; a second signal is passed on to the
    workers (it cuts their grace short). HAProxy is restarted if it dies meanwhile."""
    loop = asyncio.get_running_loop()
    got: asyncio.Queue[int] = asyncio.Queue()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, got.put_nowait, sig)
    watch = asyncio.create_task(_keep_haproxy(proxy)) if proxy else None
    try:
        first = await got.get()
    finally:
        if watch:
            watch.cancel()
    log.info("%s: stopping %d workers", signal.Signals(first).name, len(procs))
    for p in procs:
        p.stopping = True
        p.signal(first)

    async def forward_more() -> None:
        while True:
            sig = await got.get()
            for p in procs:
                p.signal(sig)

    loop.create_task(forward_more())


async def _keep_haproxy(proxy: HAProxyProcess) -> None:
    while True:
        code = await proxy.wait()
        log.error("haproxy exited with %s; starting it again (see %s)", code, proxy.log_path)
        await asyncio.sleep(1.0)
        await proxy.start()


async def _stop_all(procs: list[WorkerProcess], proxy: HAProxyProcess | None, llm, grace_s: float) -> None:
    # The workers first (SIGTERM again is harmless: they are draining already), with time to drain;
    # then the entry, whose tunnels carried their calls; the LLM server last.
    await asyncio.gather(*(p.stop(signal.SIGTERM, grace_s + 15) for p in procs), return_exceptions=True)
    if proxy is not None:
        await proxy.stop()
    if llm is not None:
        await llm.stop()
