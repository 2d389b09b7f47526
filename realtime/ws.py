"""The Realtime WebSocket: GET /v1/realtime (the openai SDK builds <base_url>/realtime?model=...).

Client events are handled one at a time, in order, as OpenAI does; server events leave through
a sender task so a slow client never blocks the controller.
"""
from __future__ import annotations

import asyncio
import json
import logging
import weakref

from aiohttp import WSCloseCode, WSMsgType, web

from realtime.admission import serve_admitted
from realtime.auth import grant
from realtime.outputs import WebSocketAudioOutput
from realtime.protocol import error_event
from realtime.session import RealtimeSession, ServerContext

log = logging.getLogger(__name__)
SERVER_KEY = web.AppKey("server", ServerContext)
SOCKETS_KEY = web.AppKey("websockets", weakref.WeakSet)


async def close_all(app: web.Application) -> None:
    """On shutdown: open sockets would otherwise hold the server up until its shutdown timeout."""
    for ws in list(app[SOCKETS_KEY]):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


async def realtime_ws(request: web.Request) -> web.StreamResponse:
    server = request.app[SERVER_KEY]
    return await serve_admitted(server.admission, lambda reservation: _serve(request, server, reservation))


async def _serve(request: web.Request, server, reservation) -> web.WebSocketResponse:
    max_bytes = server.config.server.max_event_bytes
    # Frames above max_event_bytes get an `error` event (the session lives on); only frames far
    # beyond it make aiohttp drop the connection, so one bad event can't exhaust memory.
    ws = web.WebSocketResponse(protocols=("realtime",), max_msg_size=4 * max_bytes + 65_536, heartbeat=30)
    await ws.prepare(request)
    request.app[SOCKETS_KEY].add(ws)
    session = RealtimeSession(server, "websocket", lambda s: WebSocketAudioOutput(s.send, clock=server.clock),
                              reservation)
    session.closer = lambda message: ws.close(code=WSCloseCode.GOING_AWAY, message=message.encode()[:120])
    if request.query.get("model"):
        session.settings.model = request.query["model"]
    if grant(request).session:  # the client secret's session config
        await session.handle_text(json.dumps({"type": "session.update", "session": grant(request).session}))
    log.info("session %s: websocket from %s", session.id, request.remote)
    sender = asyncio.create_task(_send_loop(session, ws), name=f"step-ws-send-{session.id}")
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await session.handle_text(msg.data)
            elif msg.type == WSMsgType.BINARY:
                session.send(error_event("invalid_request_error", "invalid_event",
                                         "binary frames are not supported; send JSON text events"))
            elif msg.type == WSMsgType.ERROR:
                log.info("session %s: websocket error %s", session.id, ws.exception())
                break
    finally:
        sender.cancel()
        await session.close()
        await asyncio.gather(sender, return_exceptions=True)
        if not ws.closed:
            await ws.close()
        log.info("session %s: closed", session.id)
    return ws


async def _send_loop(session: RealtimeSession, ws: web.WebSocketResponse) -> None:
    try:
        while True:
            data = await session.outbox.get()
            await ws.send_str(data)
    except (ConnectionError, RuntimeError):  # the client went away; the receive loop ends too
        log.debug("session %s: send failed, client gone", session.id)
