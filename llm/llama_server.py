"""The bundled LLM server: llama-cpp-python's OpenAI-compatible server on loopback.

It runs as a child process (`python -m llama_cpp.server`), not in-process, so generation never
competes with the event loop for the GIL and a stuck model can be killed. The child is killed on
close(), at interpreter exit, and by the kernel if this process dies (llm/llama_child.py).

llama-cpp-python ships no wheels: it compiles from source once (`pip install
'llama-cpp-python[server]'`, ~10 min on 2 cores); the set-up caches the built wheel.
"""
from __future__ import annotations

import asyncio
import atexit
import os
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp


class LlamaServerError(RuntimeError):
    """The server could not be started; the message includes the end of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def llama_cpp_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


class LlamaServer:
    def __init__(self, model_path: Path, model_alias: str, *, n_ctx: int = 2048, n_threads: int | None = None,
                 n_threads_batch: int | None = None, prompt_cache_mb: int = 0, host: str = "127.0.0.1", port: int = 0, log_path: Path | None = None,
                 startup_timeout_s: float = 180.0) -> None:
        self.model_path = Path(model_path)
        self.model_alias = model_alias
        self.n_ctx = n_ctx
        # Default: all cores but one. llama.cpp's threads spin at barriers, so when another stage
        # (piper, whisper) holds a core, a thread per core slows decoding several-fold (docs/llm.md).
        self.n_threads = n_threads or max(1, (os.cpu_count() or 1) - 1)
        # Prompt threads: the same by default. More help on an idle machine, but a prompt is
        # evaluated at the pause, while other sessions' ASR and TTS may hold the other core, and
        # then spinning threads make it many times slower (docs/llm.md).
        self.n_threads_batch = n_threads_batch or self.n_threads
        # llama-cpp-python's RAM cache of evaluated prompt states: without it the server keeps
        # only the last request's prefix, so sessions taking turns re-evaluate whole histories.
        self.prompt_cache_mb = prompt_cache_mb
        self.host = host
        self.port = port
        self.log_path = Path(log_path) if log_path else Path(f"/tmp/step-realtime-llama-{os.getpid()}.log")
        self.startup_timeout_s = startup_timeout_s
        self.startup_seconds: float | None = None  # measured by start()
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "llm.llama_child", "--model", str(self.model_path), "--model_alias", self.model_alias,
                "--host", self.host, "--port", str(self.port), "--n_ctx", str(self.n_ctx),
                "--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads_batch),
                # Queue concurrent sessions' requests instead of cutting the running reply short.
                "--interrupt_requests", "False"] + (
            ["--cache", "True", "--cache_type", "ram", "--cache_size", str(self.prompt_cache_mb << 20)]
            if self.prompt_cache_mb else [])

    async def start(self) -> str:
        """Start the server and wait until /v1/models answers; returns the base URL."""
        if self.running:
            return self.base_url
        if not llama_cpp_installed():
            raise LlamaServerError("llama-cpp-python is not installed: pip install 'llama-cpp-python[server]' "
                                   "(or give llm.base_url of a running OpenAI-compatible server)")
        if not self.model_path.is_file():
            raise LlamaServerError(f"no model file {self.model_path}")
        if self.port == 0:
            self.port = free_port(self.host)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                *self.command(), stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                env=self._child_env())
        _live_pids.add(self._proc.pid)
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self.base_url

    @staticmethod
    def _child_env() -> dict[str, str]:
        # The child runs `-m llm.llama_child`: make this checkout importable whatever its cwd.
        root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        # Cached prompt states are MB-sized buffers allocated and freed all the time: glibc's
        # default (a threshold that grows with the sizes freed) moves them onto the heap, where
        # the freed ones fragment it and the process keeps growing. Map them, and unmap on free.
        return {"MALLOC_MMAP_THRESHOLD_": "262144", **os.environ, "PYTHONPATH": path,
                "STEP_REALTIME_PARENT_PID": str(os.getpid()), "PYTHONUNBUFFERED": "1"}

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as http:
            while True:
                assert self._proc is not None
                if self._proc.returncode is not None:
                    raise LlamaServerError(f"llama.cpp server exited with {self._proc.returncode}:\n{self.log_tail()}")
                try:
                    async with http.get(f"{self.base_url}/models") as r:
                        if r.status == 200:
                            return
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise LlamaServerError(f"llama.cpp server not ready after {self.startup_timeout_s:.0f} s:\n"
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
    # A server the program forgot to close() must not outlive it.
    for pid in list(_live_pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
