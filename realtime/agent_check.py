"""HAProxy's agent-check: this server tells the load balancer how much room it has.

With `server.agent_port` set, the server listens on that TCP port; HAProxy connects every
`agent-inter`, reads one line and closes (HAProxy 2.6 configuration.txt, "agent-check": words
separated by spaces, ended by a newline). The reply is always a whole state, because HAProxy keeps
whatever the agent said last and only the agent can undo it:

  up ready 73%     admitting; the weight is the share of this server's capacity still free
                   (admission's learned capacity, core/load.py), at least 1 % so it stays in the farm
  up drain         draining (SIGTERM or POST /admin/drain) or full: no new sessions; those it
                   carries go on (HAProxy's DRAIN state keeps tunnels and sends nothing new)
  down#starting    stages not up yet, or the bundled LLM server is being restarted (`#` what)

`balance leastconn` in front weighs open connections by this weight, so a new session goes to the
worker with the most spare capacity. The drain switch is also an HTTP route for operators:
  POST /admin/drain     stop taking sessions (finish the ones in progress; nothing exits)
  POST /admin/resume    take sessions again (not after SIGTERM: that drain ends in exit)
Both exist only on a server with `server.agent_port` (a worker behind the entry); the entry
(deploy/haproxy/) refuses /admin/ from outside, so call it on the worker's own port.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from realtime.drain import start_draining
from realtime.session import ServerContext
from realtime.ws import SERVER_KEY

log = logging.getLogger(__name__)
AGENT_KEY = web.AppKey("agent_check", object)


def agent_reply(server: ServerContext) -> str:
    """The line for HAProxy: state and weight from readiness and admission, newline-terminated."""
    if not server.ready:
        return "down#starting\n"
    if not getattr(server.stages.get("llm"), "available", True):
        return "down#llm_unavailable\n"
    admission = server.admission
    if admission.draining:
        return "up drain\n"
    if not admission.decide().admit:  # full: nothing new, but it stays UP for its own calls
        return "up drain\n"
    capacity = max(1, min(admission.monitor.capacity, admission.max_sessions))
    spare = max(0, capacity - admission.admitted)
    return f"up ready {max(1, round(100 * spare / capacity))}%\n"


class AgentCheckServer:
    def __init__(self, server: ServerContext, host: str, port: int) -> None:
        self.server, self.host, self.port = server, host, port
        self._listener: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._listener = await asyncio.start_server(self._answer, self.host, self.port)
        self.port = self._listener.sockets[0].getsockname()[1]
        log.info("agent-check on %s:%d", self.host, self.port)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:  # HAProxy may send an agent-send string first; the answer does not depend on it
            writer.write(agent_reply(self.server).encode("ascii"))
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()


async def drain_route(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    start_draining(server)
    return web.json_response({"draining": True, "sessions": len(server.sessions)})


async def resume_route(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    if getattr(server, "exiting", False):  # realtime/drain.py's drain(): SIGTERM
        return web.json_response({"draining": True, "error": "shutting down (SIGTERM): cannot resume"}, status=409)
    if server.admission.draining:
        server.admission.draining = False
        log.info("resumed: admitting new sessions")
    return web.json_response({"draining": False, "sessions": len(server.sessions)})


def _not_a_health_check(record: logging.LogRecord) -> bool:
    return '"GET /healthz ' not in record.getMessage()


def install(app: web.Application) -> None:
    """With server.agent_port set (a worker behind the entry): the agent-check listener and the
    admin drain routes (an API key needed, realtime/auth.py, and the entry refuses /admin/ from
    outside). A lone server has neither."""
    server = app[SERVER_KEY]
    port = server.config.server.agent_port
    if port is None:
        return
    app.router.add_post("/admin/drain", drain_route)
    app.router.add_post("/admin/resume", resume_route)
    # The entry checks /healthz every second: not a line in the access log each time.
    logging.getLogger("aiohttp.access").addFilter(_not_a_health_check)
    agent = app[AGENT_KEY] = AgentCheckServer(server, server.config.server.host, port)

    async def start(_app: web.Application) -> None:
        await agent.start()

    async def stop(_app: web.Application) -> None:
        await agent.close()

    # Answering from before the stages are up ("down#starting") to the end: HAProxy then sees the
    # drain and the exit as they happen.
    app.on_startup.insert(0, start)
    app.on_cleanup.append(stop)
