"""The server: one aiohttp app on one port.

  GET  /                               the web client (web_client/index.html), files beside it
  GET  /healthz                        liveness + whether the stages are up
  GET  /readyz                         200 while admitting new sessions, else 503 (for load balancers)
  GET  /metrics                        Prometheus text format (realtime/prometheus.py)
  GET  /metrics.json                   sessions, speculation counters, recent turn latencies (JSON)
  GET  /v1/realtime                    OpenAI Realtime over WebSocket
  POST /v1/realtime/calls              OpenAI Realtime over WebRTC (SDP offer → answer)
  POST /v1/realtime/calls/{id}/hangup
  POST /v1/realtime/client_secrets     a short-lived key for a browser (realtime/client_secrets.py)
  GET  /v1/telephony/twilio            phone calls over Twilio Media Streams (WebSocket, μ-law)
  GET  /v1/telephony/telnyx            phone calls over Telnyx media streaming (WebSocket, G.711)
  GET  /v1/telephony/vonage            phone calls over Vonage WebSocket audio (L16 16 kHz)
  (TCP server.audiosocket.port)        phone calls over Asterisk AudioSocket, if configured
  POST /v1/telephony/calls/{id}/hangup, /transfer   call control (realtime/telephony/control.py)
  POST /admin/drain, /admin/resume     stop / start taking new sessions (realtime/agent_check.py)
  (TCP server.agent_port)              HAProxy agent-check: load and drain state, if configured

Every route but /, its files, /healthz and /readyz needs a key (realtime/auth.py) unless
server.auth.enabled is false. Stages are built once per server from the config (core.stages.build_all) and shared by all
sessions; each session gets its own VAD and tokenizer from their factories.
"""
from __future__ import annotations

import asyncio
import logging
import statistics
import weakref
from pathlib import Path

import psutil
from aiohttp import web

from core.stages import BuildEnv, build_all, close_all as close_all_stages, start_all as start_all_stages
from realtime import agent_check, auth, client_secrets, prometheus, telephony, webrtc
from realtime.telephony import audiosocket, control, telnyx, vonage
from realtime.config import Config
from realtime.session import ServerContext
from realtime.ws import SERVER_KEY, SOCKETS_KEY, close_all, realtime_ws

log = logging.getLogger(__name__)
WEB_CLIENT = Path(__file__).resolve().parent.parent / "web_client"
ENV_KEY = web.AppKey("build_env", BuildEnv)


def create_app(config: Config, stages: dict | None = None) -> web.Application:
    """`stages`: already-built stage objects (tests); by default they are built at startup."""
    authenticator = auth.Authenticator(config)  # ConfigError when auth is on without a key
    app = web.Application(client_max_size=4 * config.server.max_sdp_bytes, middlewares=[auth.middleware])
    app[auth.AUTH_KEY] = authenticator
    if not config.server.auth.enabled:
        log.warning("server.auth.enabled is false: every endpoint is open to whoever reaches %s:%s",
                    config.server.host, config.server.port)
    env = app[ENV_KEY] = BuildEnv(cache_dir=config.cache_path)
    app[SERVER_KEY] = ServerContext(config, stages or {}, env.scheduler)
    app[webrtc.CALLS_KEY] = {}
    app[SOCKETS_KEY] = weakref.WeakSet()
    if webrtc.is_loopback(config.server.host):
        webrtc.use_loopback_candidates()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus_metrics)
    app.router.add_get("/metrics.json", metrics)
    app.router.add_get("/v1/realtime", realtime_ws)
    app.router.add_post("/v1/realtime/calls", webrtc.create_call)
    app.router.add_post("/v1/realtime/calls/{call_id}/hangup", webrtc.hangup)
    app.router.add_post("/v1/realtime/client_secrets", client_secrets.create)
    app.router.add_get("/v1/telephony/twilio", telephony.twilio_ws)
    app.router.add_get("/v1/telephony/telnyx", telnyx.telnyx_ws)
    app.router.add_get("/v1/telephony/vonage", vonage.vonage_ws)
    control.add_routes(app)  # /v1/telephony/calls/{session_id}/hangup, /transfer
    app.router.add_get("/", web_client)
    app.router.add_get("/{name:[A-Za-z0-9_./-]+}", web_client)
    app.on_startup.append(_start_stages)
    audiosocket.install(app)
    agent_check.install(app)  # /admin/drain, /admin/resume; HAProxy's agent-check if server.agent_port
    app.on_shutdown.append(_end_sessions)
    app.on_cleanup.append(_close_stages)
    return app


async def _start_stages(app: web.Application) -> None:
    server = app[SERVER_KEY]
    if not server.stages:
        server.stages = build_all(server.config, app[ENV_KEY])
    await start_all_stages(server.stages)
    if server.tool_runner is not None:  # MCP servers' tools are learnt now (tools/)
        await server.tool_runner.start()
        app[ENV_KEY].cleanups.append(server.tool_runner.close)
    server.monitor.start(lambda: len(server.sessions))
    server.ready = True
    log.info("stages ready: %s", {k: type(v).__name__ for k, v in server.stages.items()})


async def _end_sessions(app: web.Application) -> None:
    await close_all(app)
    await asyncio.gather(*(call.close() for call in list(app[webrtc.CALLS_KEY].values())),
                         return_exceptions=True)
    await asyncio.gather(*(s.close() for s in list(app[SERVER_KEY].sessions)), return_exceptions=True)


async def _close_stages(app: web.Application) -> None:
    await app[SERVER_KEY].monitor.stop()
    await close_all_stages(app[SERVER_KEY].stages)
    for cleanup in app[ENV_KEY].cleanups:
        try:
            await cleanup()
        except Exception:
            log.exception("cleanup failed")


async def healthz(request: web.Request) -> web.Response:
    """Liveness. 503 when a model worker thread is wedged (a call that never returns): every
    session's work of that kind waits behind it for good, and only a restart frees it."""
    server = request.app[SERVER_KEY]
    body = {"ok": True, "stages": {k: type(v).__name__ for k, v in server.stages.items()},
            "sessions": len(server.sessions)}
    stuck = server.scheduler.stuck(server.config.server.model_stuck_after_s)
    if stuck:
        log.error("model worker wedged (seconds in one call, by lane): %s; restart this process", stuck)
        return web.json_response({**body, "ok": False, "stuck": stuck}, status=503)
    return web.json_response(body)


async def readyz(request: web.Request) -> web.Response:
    """For a load balancer: 200 while this server takes new sessions, 503 (with why) when its
    stages are not up yet, it is draining (SIGTERM), the bundled LLM server is down (being
    restarted), or admitting one more would overload the calls in progress. (/healthz: alive.)"""
    server = request.app[SERVER_KEY]
    if not server.ready:
        return web.json_response({"ready": False, "reason": "starting"}, status=503)
    if server.admission.draining:
        return web.json_response({"ready": False, "reason": "draining"}, status=503)
    if not getattr(server.stages.get("llm"), "available", True):  # its server is being restarted
        return web.json_response({"ready": False, "reason": "llm_unavailable"}, status=503,
                                 headers={"Retry-After": "5"})
    decision = server.admission.decide()
    if not decision.admit:
        return web.json_response({"ready": False, "reason": decision.reason}, status=503,
                                 headers={"Retry-After": str(decision.retry_after_s)})
    return web.json_response({"ready": True, "sessions": len(server.sessions)})


async def prometheus_metrics(request: web.Request) -> web.Response:
    body = request.app[SERVER_KEY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": prometheus.CONTENT_TYPE})


async def metrics(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    turns = list(server.recent_turns)
    medians: dict[str, float] = {}
    for key in sorted({k for t in turns for k in t.values}):
        values = [t.values[key] for t in turns if t.values.get(key) is not None]
        if values:
            medians[key] = round(statistics.median(values), 1)
    return web.json_response({
        "sessions": {"active": len(server.sessions), "max": server.config.server.max_sessions,
                     "by_transport": _count(s.transport for s in server.sessions)},
        "speculation": server.stats.as_dict(),
        "scheduler": {"lanes": server.scheduler.snapshot(), "load": server.admission.snapshot()},
        "turns": {"recent": len(turns), "speculative": sum(t.speculative for t in turns),
                  "median_ms": medians},
        # what a leak would grow (the soak watches them): tasks left behind, sockets and files left open
        "process": {"asyncio_tasks": len(asyncio.all_tasks()), "open_fds": psutil.Process().num_fds()},
    })


def _count(items) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


async def web_client(request: web.Request) -> web.StreamResponse:
    name = request.match_info.get("name", "index.html")
    path = (WEB_CLIENT / name).resolve()
    if WEB_CLIENT not in path.parents or not path.is_file():
        if name == "index.html":
            return web.Response(status=404, text="web client not installed (web_client/index.html is missing)\n")
        raise web.HTTPNotFound()
    return web.FileResponse(path)
