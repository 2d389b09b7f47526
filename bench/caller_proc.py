"""Caller processes: a level's callers spread over K processes beside the bench's own, so the
callers' Opus/aiortc work and event-loop lag do not pollute what they measure.

Protocol (JSON lines; `python -m bench.caller_proc`):
  bench → process, stdin:  {"job": ShareJob, "corpus": path}   then, when every process is ready,
                           {"go": {"t0", "until", "hard_stop"}}  (absolute monotonic times)
  process → bench, stdout: {"ready": pid}, then as they happen {"turn": ms|null}, {"call": {...}},
                           {"records": [TurnRecord...]}, {"error": text}, and at the end {"done": stats}
A process measures its own loop lag and CPU, and analyzes its callers' turns against its own
stalls. Anything else it prints goes to its log (stderr). If the bench goes away (stdin closes)
the process stops its calls and exits; if the process dies, the bench reports it with the end of
its log and keeps the records it had already sent — it is never waited on past the hard stop.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

from bench.callers import CallerRun, CpuMeter, LoopLag, ShareJob, Sink, run_share
from bench.corpus import load_conversations
from core.processes import dying_with_parent
from bench.measure import TurnRecord

ROOT = Path(__file__).resolve().parent.parent
WORKER_CMD = [sys.executable, "-m", "bench.caller_proc"]
READY_TIMEOUT_S = 120.0  # imports + corpus load, on a loaded machine
EXIT_GRACE_S = 20.0  # after the hard stop: then the process is killed


# -- the caller process ------------------------------------------------------------------------

class _Lines(Sink):
    def __init__(self, out) -> None:
        self.out = out

    def send(self, obj: dict) -> None:
        self.out.write(json.dumps(obj) + "\n")
        self.out.flush()

    def turn(self, v2v_ms):
        self.send({"turn": v2v_ms})

    def call(self, info):
        self.send({"call": info})

    def records(self, records):
        self.send({"records": [r.as_dict() for r in records]})

    def error(self, text):
        self.send({"error": text})


async def _worker(out) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2 ** 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    line = await reader.readline()
    if not line:
        return
    msg = json.loads(line)
    job = ShareJob.from_json(msg["job"])
    corpus = load_conversations(Path(msg["corpus"]))
    from bench.callers import caller_module
    caller_module(job.transport)  # import now (aiortc is slow to import), not inside the level
    sink = _Lines(out)
    sink.send({"ready": os.getpid()})
    line = await reader.readline()
    if not line:  # the bench went away before the level started
        return
    go = json.loads(line)["go"]
    job.t0, job.until = go["t0"], go["until"]
    job.opts.deadline = job.until
    job.hard_stop = math.inf if go.get("hard_stop") is None else go["hard_stop"]
    lag, cpu = LoopLag(), CpuMeter()
    share = asyncio.create_task(run_share(job, corpus, sink, lag))
    gone = asyncio.create_task(reader.read())  # returns at EOF: the bench closed our stdin
    await asyncio.wait([share, gone], return_when=asyncio.FIRST_COMPLETED)
    if not share.done():
        share.cancel()
        sink.error("caller process: stopped by the bench before its callers finished")
    gone.cancel()
    await asyncio.gather(share, gone, return_exceptions=True)
    if share.done() and not share.cancelled() and share.exception() is not None:
        exc = share.exception()
        sink.error(f"caller process: {type(exc).__name__}: {exc}")
    stats = {**await cpu.stop(), **lag.take()}
    await lag.stop()
    with contextlib.suppress(BrokenPipeError):
        sink.send({"done": stats})


def main() -> None:
    # the protocol gets its own copy of stdout; whatever else prints (libraries) goes to stderr
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        asyncio.run(_worker(out))
    except (KeyboardInterrupt, BrokenPipeError):
        pass


# -- the bench's side --------------------------------------------------------------------------

def _tail(path: Path, n: int = 1500) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return ("…" + text[-n:]) if len(text) > n else text


class _Proc:
    def __init__(self, k: int, job: ShareJob, log_path: Path) -> None:
        self.k, self.job, self.log_path = k, job, log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = False
        self.done: dict | None = None
        self.error: str | None = None

    @property
    def callers(self) -> list[int]:
        return [p.caller for p in self.job.plans]

    async def spawn(self, corpus_path: Path) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        with open(self.log_path, "wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *dying_with_parent(WORKER_CMD), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                env=env, limit=2 ** 24)  # no orphaned callers
        await self.send({"job": self.job.to_json(), "corpus": str(corpus_path)})

    async def send(self, obj: dict) -> bool:
        try:
            self.proc.stdin.write((json.dumps(obj) + "\n").encode())
            await self.proc.stdin.drain()
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    async def wait_ready(self, timeout_s: float) -> None:
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
        except asyncio.TimeoutError:
            self.error = f"not ready within {timeout_s:.0f} s: killed"
            self.kill()
            return
        try:
            self.ready = "ready" in json.loads(line) if line else False
        except ValueError:
            self.ready = False
        if not self.ready:
            code = await self._exit_code(5.0)
            self.error = f"exited with code {code} before it was ready"

    async def read(self, run: CallerRun, on_turn) -> None:
        """Everything the process sends, until it closes its stdout."""
        while line := await self.proc.stdout.readline():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "turn" in msg:
                if on_turn:
                    on_turn(msg["turn"])
            elif "call" in msg:
                run.calls.append(msg["call"])
            elif "records" in msg:
                run.records += [TurnRecord(**d) for d in msg["records"]]
            elif "error" in msg:
                run.errors.append(msg["error"])
            elif "done" in msg:
                self.done = msg["done"]

    async def _exit_code(self, timeout_s: float) -> int | None:
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout_s)
        except asyncio.TimeoutError:
            self.kill()
            return await self.proc.wait()

    def kill(self) -> None:
        if self.proc and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    async def finish(self) -> dict:
        """After read(): the exit code, and what went wrong if it did not end with "done"."""
        if self.proc.stdin and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        code = await self._exit_code(5.0)
        if self.error is None and self.done is None:
            self.error = f"died during the level (exit code {code}); calls in progress are lost"
        stats = {"proc": self.k, "pid": self.proc.pid, "callers": self.callers, **(self.done or {}),
                 "exit_code": code, "error": self.error, "log": str(self.log_path)}
        return stats


async def run_in_processes(jobs: list[ShareJob], corpus_path: Path, log_dir: Path, times, on_turn=None,
                           ready_timeout_s: float = READY_TIMEOUT_S, label: str = "callers") -> CallerRun:
    """One level: a process per job, started and loaded first; then `times()` gives the level's
    (t0, until, hard_stop), the same for every process, and they run. Returns every record sent
    by every process; a process that failed is in `errors` (with the end of its log) and in `procs`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    stamp = f"{label}-{time.strftime('%H%M%S')}".replace("/", "-").replace(" ", "")
    procs = [_Proc(k, job, log_dir / f"{stamp}-p{k}.log") for k, job in enumerate(jobs)]
    run = CallerRun()
    try:
        for p in procs:
            await p.spawn(corpus_path)
        await asyncio.gather(*(p.wait_ready(ready_timeout_s) for p in procs))
        t0, until, hard_stop = times()
        go = {"go": {"t0": t0, "until": until, "hard_stop": None if math.isinf(hard_stop) else hard_stop}}
        for p in procs:
            if p.ready and not await p.send(go):
                p.error = "its stdin closed before the level started"
        readers = [asyncio.create_task(p.read(run, on_turn)) for p in procs]
        limit = None if math.isinf(hard_stop) else max(1.0, hard_stop + EXIT_GRACE_S - time.monotonic())
        _, late = await asyncio.wait(readers, timeout=limit)
        for p, reader in zip(procs, readers):
            if reader in late:
                p.error = f"still running {EXIT_GRACE_S:.0f} s after the hard stop: killed"
                p.kill()
        await asyncio.gather(*readers, return_exceptions=True)
        run.procs = [await p.finish() for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, stats in zip(procs, run.procs):
        if stats["error"]:
            tail = _tail(p.log_path)
            run.errors.append(f"caller process {p.k} (pid {stats['pid']}, callers {p.callers}): {stats['error']}"
                              + (f"; its log ends: {tail}" if tail else ""))
    for p, stats in zip(procs, run.procs):  # an empty log says nothing
        with contextlib.suppress(OSError):
            if p.log_path.stat().st_size == 0:
                p.log_path.unlink()
                stats["log"] = None
    return run


if __name__ == "__main__":
    main()
