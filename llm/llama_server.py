"""The bundled LLM server: llama.cpp's own `llama-server` on loopback, with continuous batching.

The binary is built from source once per machine (llm/build_llama_server.py, run by `make
setup`) and found in the cache dir under a name keyed by the pinned source's hash. It runs as a
child process, so generation never competes with the event loop for the GIL and a stuck model
can be killed. The child is killed on stop(), at interpreter exit, and by the kernel if this
process dies (PR_SET_PDEATHSIG, set between fork and exec).

`n_parallel` slots decode together: every step of the server's loop evaluates one batch holding
the next token of every active reply (and the prompt chunks of new ones), so concurrent sessions
share the model instead of queueing for it. Each slot keeps its last prompt in its own part of
the KV cache, and a RAM cache of prompt states (`--cache-ram`) keeps the ones pushed out, so
each conversation's prefix survives other sessions' requests (docs/llm.md).

Supervision: once started, a supervisor task waits on the child; if it exits without stop() having
asked (a crash, the OOM killer, kill -9), it is started again on the same port, so the clients'
base URL stays valid, after a backoff that doubles while restarts keep failing. Replies streaming
at the moment of the crash fail (the caller gets an `error` event); the next ones are served once
the child is back. `restarts` counts the restarts (/metrics).
"""
from __future__ import annotations

import asyncio
import atexit
import logging
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import aiohttp

from core.processes import dying_with_parent
from llm import build_llama_server

STABLE_S = 60.0  # a child up this long before it died is restarted after the shortest wait
log = logging.getLogger(__name__)


class LlamaServerError(RuntimeError):
    """The server could not be started; the message includes the end of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def find_binary(cache_dir: Path | None = None) -> Path | None:
    """The llama-server to run: $STEP_REALTIME_LLAMA_SERVER, else the pinned build in `cache_dir`
    or in the default cache dir (where `make setup` builds it), else None."""
    override = os.environ.get("STEP_REALTIME_LLAMA_SERVER")
    if override:
        return Path(override)
    for base in dict.fromkeys([cache_dir or build_llama_server.DEFAULT_CACHE_DIR, build_llama_server.DEFAULT_CACHE_DIR]):
        path = build_llama_server.binary_path(base)
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def binary_missing_reason(cache_dir: Path | None = None) -> str | None:
    """None when a llama-server binary is there, else what to do (tests skip or fail with it)."""
    binary = find_binary(cache_dir)
    if binary is not None and binary.is_file():
        return None
    if binary is not None:
        return f"no llama-server at {binary} ($STEP_REALTIME_LLAMA_SERVER)"
    return (f"no llama-server: {build_llama_server.binary_name()} is not in {build_llama_server.DEFAULT_CACHE_DIR}/bin; "
            "build it with `make setup` or `.venv/bin/python -m llm.build_llama_server` "
            "(or give llm.base_url of a running OpenAI-compatible server)")


class LlamaServer:
    def __init__(self, model_path: Path, model_alias: str, *, n_parallel: int = 8, n_ctx: int = 2048,
                 n_threads: int | None = None, n_threads_batch: int | None = None, prompt_cache_mb: int = 256,
                 cache_reuse: int = 64, binary: Path | None = None, cache_dir: Path | None = None,
                 host: str = "127.0.0.1", port: int = 0, log_path: Path | None = None,
                 startup_timeout_s: float = 180.0, extra_args: list[str] | None = None,
                 restart_backoff_s: tuple[float, float] = (1.0, 30.0)) -> None:
        self.model_path = Path(model_path)
        self.model_alias = model_alias
        # Slots: requests decoded together. More than the sessions cost only their KV memory.
        self.n_parallel = n_parallel
        self.n_ctx = n_ctx  # per slot; the KV cache holds n_parallel * n_ctx tokens
        # Default: all cores but one. llama.cpp's threads spin at barriers, so when another stage
        # (piper, whisper) holds a core, a thread per core slows decoding several-fold (docs/llm.md).
        self.n_threads = n_threads or max(1, (os.cpu_count() or 1) - 1)
        # Prompt threads: the same by default. More help on an idle machine, but a prompt is
        # evaluated at the pause, while other sessions' ASR and TTS may hold the other core, and
        # then spinning threads make it many times slower (docs/llm.md).
        self.n_threads_batch = n_threads_batch or self.n_threads
        # RAM cache of prompt states pushed out of their slot (--cache-ram), 0 = off.
        self.prompt_cache_mb = prompt_cache_mb
        # Reuse KV chunks of at least this many tokens by shifting them (when the context drops
        # its oldest turns the rest of the history is not re-evaluated), 0 = off.
        self.cache_reuse = cache_reuse
        self.binary = Path(binary) if binary else None
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.host = host
        self.port = port
        self.log_path = Path(log_path) if log_path else Path(f"/tmp/step-realtime-llama-{os.getpid()}.log")
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = list(extra_args or [])
        self.startup_seconds: float | None = None  # measured by start()
        self._proc: asyncio.subprocess.Process | None = None
        self.restart_backoff_s = restart_backoff_s  # first and longest wait before a restart
        self.restarts = 0  # children started again after they died
        self._supervisor: asyncio.Task | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        """Where llama-server's own endpoints are (/health, /slots, /metrics, /tokenize)."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def resolve_binary(self) -> Path:
        binary = self.binary or find_binary(self.cache_dir) or (Path(p) if (p := shutil.which("llama-server")) else None)
        if binary is None:
            raise LlamaServerError(binary_missing_reason(self.cache_dir))
        if not binary.is_file():
            raise LlamaServerError(f"no llama-server at {binary}")
        return binary

    def command(self, binary: Path | None = None) -> list[str]:
        binary = binary or self.binary or find_binary(self.cache_dir) or Path("llama-server")
        return [str(binary), "--model", str(self.model_path), "--alias", self.model_alias,
                "--host", self.host, "--port", str(self.port),
                # Continuous batching over n_parallel slots, each with its own n_ctx of KV cache
                # (not one shared buffer: attention then spans only the slot's own tokens).
                "--parallel", str(self.n_parallel), "--cont-batching", "--no-kv-unified",
                "--ctx-size", str(self.n_ctx * self.n_parallel),
                "--threads", str(self.n_threads), "--threads-batch", str(self.n_threads_batch),
                "--cache-ram", str(self.prompt_cache_mb), "--cache-reuse", str(self.cache_reuse),
                # The previous server's (llama-cpp-python's) default; llama-server's is 1.0, with
                # which SmolLM2 loops on phrases more. A request's own repeat_penalty wins.
                "--repeat-penalty", "1.1",
                # The model's own (Jinja) chat template: it is what renders `tools` and tool calls,
                # and what parses a tool call back out of the reply (docs/tools.md).
                "--jinja",
                "--metrics", "--no-webui", "--offline", "--log-colors", "off", "--log-timestamps",
                *self.extra_args]

    async def start(self) -> str:
        """Start the server and wait until it has loaded the model; returns the base URL (…/v1).
        From then on it is supervised (restarted when it dies) until stop()."""
        if self.running or (self._supervisor is not None and not self._supervisor.done()):
            return self.base_url  # up, or down and being restarted by its supervisor
        await self._launch()
        self._supervisor = asyncio.create_task(self._supervise(), name="llama-server-supervisor")
        return self.base_url

    async def _supervise(self) -> None:
        first, longest = self.restart_backoff_s
        backoff = first
        while True:
            proc = self._proc
            if proc is None:
                return
            up_since = time.monotonic()
            code = await proc.wait()
            if self._proc is not proc:  # stop() took it away: an exit we asked for
                return
            _live_pids.discard(proc.pid)
            self._proc = None
            # A child that keeps dying soon after its start is not restarted ever faster.
            backoff = first if time.monotonic() - up_since > STABLE_S else min(backoff * 2, longest)
            log.error("llama-server (pid %s) exited with %s; restarting in %.1f s:\n%s",
                      proc.pid, code, backoff, self.log_tail(5))
            while True:
                await asyncio.sleep(backoff)
                try:
                    await self._launch()
                except Exception as exc:  # LlamaServerError, or the exec itself failing
                    backoff = min(backoff * 2, longest)
                    log.error("llama-server restart failed; next try in %.1f s: %s", backoff, exc)
                    continue
                self.restarts += 1
                log.warning("llama-server restarted (restart %d) in %.1f s", self.restarts,
                            self.startup_seconds or 0.0)
                break

    async def _launch(self) -> None:
        binary = self.resolve_binary()
        if not self.model_path.is_file():
            raise LlamaServerError(f"no model file {self.model_path}")
        if self.port == 0:
            self.port = free_port(self.host)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                *dying_with_parent(self.command(binary)), stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                env=self._child_env())
        _live_pids.add(self._proc.pid)
        try:
            await self._wait_ready()
        except BaseException:
            await self._end_child()
            raise
        self.startup_seconds = time.monotonic() - t0

    @staticmethod
    def _child_env() -> dict[str, str]:
        # llama-server reads LLAMA_ARG_* variables as flags: none may leak in from our environment.
        return {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_ARG_")}

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as http:
            while True:
                assert self._proc is not None
                if self._proc.returncode is not None:
                    raise LlamaServerError(f"llama-server exited with {self._proc.returncode}:\n{self.log_tail()}")
                try:  # 503 while the model loads, 200 once it serves
                    async with http.get(f"{self.root_url}/health") as r:
                        if r.status == 200:
                            return
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise LlamaServerError(f"llama-server not ready after {self.startup_timeout_s:.0f} s:\n"
                                           f"{self.log_tail()}")
                try:  # wakes early if the process exits
                    await asyncio.wait_for(self._proc.wait(), 0.25)
                except asyncio.TimeoutError:
                    pass

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self, grace_s: float = 5.0) -> None:
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        await self._end_child(grace_s)

    async def _end_child(self, grace_s: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _live_pids.discard(proc.pid)
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


_live_pids: set[int] = set()


@atexit.register
def _kill_leftovers() -> None:
    # A server the program forgot to stop() must not outlive it.
    for pid in list(_live_pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
