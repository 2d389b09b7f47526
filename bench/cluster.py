"""The bench against a cluster (`step-realtime serve --workers N --haproxy`): callers dial the
HAProxy entry, and each level reports how its calls spread over the workers (sessions each worker
started during the level, from its own /metrics), beside the latency.

`--cluster N` runs an interleaved A/B on the same corpus: the single-process server against N
workers behind HAProxy, both started by the bench from the same config. With `--url` (a cluster
already running) give its workers' own URLs with `--worker-url` to see the spread.
"""
from __future__ import annotations

import asyncio
import re

from bench.measure import auth_headers

WORKER_LINE = re.compile(r"^worker (w\d+): (http://\S+?)/ ")
STARTED = re.compile(r'^step_sessions_started_total\{[^}]*\}\s+([0-9.e+]+)$', re.M)


def parse_started(prometheus_text: str) -> int:
    """Sessions a server started so far (all transports), from its /metrics text."""
    return int(sum(float(v) for v in STARTED.findall(prometheus_text)))


async def sessions_started(workers: dict[str, str]) -> dict[str, int | None]:
    """{worker: sessions started so far}; None for a worker that did not answer (dead, restarting)."""
    import aiohttp

    async def one(http, url: str) -> int | None:
        try:
            async with http.get(url.rstrip("/") + "/metrics") as r:
                return parse_started(await r.text()) if r.status == 200 else None
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return None

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5), headers=auth_headers()) as http:
        counts = await asyncio.gather(*(one(http, url) for url in workers.values()))
    return dict(zip(workers, counts))


def spread(before: dict[str, int | None], after: dict[str, int | None]) -> dict[str, int | None]:
    """Sessions each worker started between two readings (None if either is missing, or the
    worker was restarted in between: its counter started again from 0)."""
    out = {}
    for name, b in before.items():
        a = after.get(name)
        out[name] = None if a is None or b is None or a < b else a - b
    return out


def spread_line(counts: dict[str, int | None]) -> str:
    return "calls per worker " + ", ".join(f"{k} {'?' if v is None else v}" for k, v in counts.items())
