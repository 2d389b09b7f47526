"""Admission: a new session is let in only while the load monitor (core/load.py) says it fits.

The check and the reservation are one synchronous step, so N connections racing in at once cannot
all pass a check made before any of them was counted. A refusal happens before any media is
accepted: HTTP 503 with Retry-After on every endpoint (WebRTC calls, the Realtime WebSocket and
telephony refuse before the upgrade), with a Realtime `error` body saying why.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from core.load import Decision, LoadMonitor
from realtime.protocol import error_event


class Refused(Exception):
    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.reason)
        self.decision = decision


class Reservation:
    """A place for one session; released when the session ends (or its set-up fails)."""

    def __init__(self, admission: "Admission") -> None:
        self._admission = admission
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._admission.admitted -= 1


class Admission:
    def __init__(self, monitor: LoadMonitor, max_sessions: int) -> None:
        self.monitor = monitor
        self.max_sessions = max_sessions  # the media plane's own ceiling, whatever the models allow
        self.admitted = 0  # reservations held: sessions in a call or being set up
        self.refused = 0
        self.draining = False  # shutting down (realtime/drain.py): nobody new

    def decide(self) -> Decision:
        if self.draining:
            return Decision(False, "the server is shutting down", self.monitor.cfg.retry_after_s)
        if self.admitted >= self.max_sessions:
            return Decision(False, f"all {self.max_sessions} sessions are in use",
                            self.monitor.cfg.retry_after_s)
        return self.monitor.decide(self.admitted)

    def reserve(self) -> Reservation:
        decision = self.decide()
        if not decision.admit:
            self.refused += 1
            raise Refused(decision)
        self.admitted += 1
        return Reservation(self)

    def snapshot(self) -> dict:
        decision = self.decide()
        return {**self.monitor.snapshot(self.admitted), "max_sessions": self.max_sessions, "refused": self.refused,
                "admitting": decision.admit, "reason": decision.reason or None}


async def serve_admitted(admission: Admission, serve: Callable[[Reservation], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
    """A WebSocket endpoint's handler: a place is reserved (or 503 before the upgrade), `serve`
    runs with it, and it is given back after (the session gave it back already unless its set-up
    failed first)."""
    try:
        reservation = admission.reserve()
    except Refused as refused:
        return busy(refused)
    try:
        return await serve(reservation)
    finally:
        reservation.release()


def busy(refused: Refused) -> web.Response:
    d = refused.decision
    return web.json_response(error_event("server_error", "server_busy", f"{d.reason}; try again later"),
                             status=503, headers={"Retry-After": str(d.retry_after_s)})
