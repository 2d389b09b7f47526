"""Draining on SIGTERM: stop admitting (/readyz answers 503 "draining", new sessions get 503),
let the calls in progress finish for up to server.drain_grace_s, then tell the ones still open
that the session is ending and let the ordinary shutdown close them.

A load balancer sees readiness drop at once and sends new callers elsewhere; callers already
talking are not cut mid-sentence unless they outstay the grace period.
"""
from __future__ import annotations

import asyncio
import logging

from realtime.protocol import error_event
from realtime.session import ServerContext

log = logging.getLogger(__name__)
ENDING_MESSAGE = "the server is shutting down; this session ends now (connect again to continue)"


def start_draining(server: ServerContext) -> None:
    if not server.admission.draining:
        server.admission.draining = True
        log.info("draining: no new sessions; %d in progress", len(server.sessions))


async def drain(server: ServerContext, grace_s: float, hurry: asyncio.Event | None = None,
                flush_s: float = 2.0) -> None:
    """Returns when every session has ended, or after `grace_s` (or once `hurry` is set) with the
    remaining sessions told they are ending (their events given `flush_s` to leave)."""
    server.exiting = True  # this drain ends in exit: POST /admin/resume may not undo it
    start_draining(server)
    hurry = hurry or asyncio.Event()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    while server.sessions and not hurry.is_set() and loop.time() < deadline:
        try:  # wakes for hurry, else re-checks the sessions every 0.1 s
            await asyncio.wait_for(hurry.wait(), min(0.1, max(0.0, deadline - loop.time())))
        except asyncio.TimeoutError:
            pass
    remaining = [s for s in server.sessions if not s.closed]
    if not remaining:
        log.info("drained: every session ended")
        return
    log.info("drain grace over: ending %d session(s)", len(remaining))
    for session in remaining:
        session.send({"type": "step.session_ending", "reason": "server_shutdown"})
        session.send(error_event("server_error", "session_ending", ENDING_MESSAGE))
    end = loop.time() + flush_s
    while any(not s.outbox.empty() for s in remaining if not s.closed) and loop.time() < end:
        await asyncio.sleep(0.02)
