"""POST /v1/realtime/client_secrets: a short-lived secret for a browser, as in OpenAI's Realtime API.

A backend holding an API key asks for one and hands its `value` (ek_…) to a page; the page uses
it as its key for one or more sessions (POST /v1/realtime/calls, the WebSocket) until
`expires_at`. A session config given here is applied to every session started with the secret.

  request   {"expires_after": {"anchor": "created_at", "seconds": 10..7200}, "session": {...}}  (both optional)
  response  {"value": "ek_...", "expires_at": <epoch seconds>, "session": {...the effective config}}

Secrets are signed (HMAC-SHA256 under a key derived from the API keys), not stored: every server
with the same keys — each worker behind a load balancer — accepts them; changing the keys revokes
them. The session config travels inside the secret (at most ~3 KB compressed).
"""
from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from realtime import protocol as p
from realtime.auth import AUTH_KEY, AuthError
from realtime.ws import SERVER_KEY

MAX_BODY = 256_000


def _bad(message: str, param: str | None = None) -> web.Response:
    return web.json_response(p.error_event("invalid_request_error", "invalid_value", message, param), status=400)


async def create(request: web.Request) -> web.Response:
    auth = request.app[AUTH_KEY]
    server = request.app[SERVER_KEY]
    if request.content_length is not None and request.content_length > MAX_BODY:
        return _bad(f"the request body is larger than {MAX_BODY} bytes")
    raw = await request.read() if request.can_read_body else b""
    try:
        body: Any = json.loads(raw) if raw.strip() else {}
    except ValueError:
        return _bad("the request body is not valid JSON")
    if not isinstance(body, dict):
        return _bad("the request body must be a JSON object")
    expires = body.get("expires_after") or {}
    if not isinstance(expires, dict):
        return _bad("expires_after must be an object {anchor, seconds}", "expires_after")
    if expires.get("anchor", "created_at") != "created_at":
        return _bad("expires_after.anchor must be created_at", "expires_after.anchor")
    seconds = expires.get("seconds", auth.ttl_s)
    if not isinstance(seconds, int) or isinstance(seconds, bool) or not 10 <= seconds <= 7200:
        return _bad("expires_after.seconds must be a whole number from 10 to 7200", "expires_after.seconds")
    session = body.get("session")
    settings = p.SessionSettings(instructions=server.config.context.system_prompt)
    if session is not None:
        if not isinstance(session, dict):
            return _bad("session must be an object (a Realtime session config)", "session")
        try:  # checked now as session.update would check it, so a bad config fails here, not later
            event = p.parse_client_event(json.dumps({"type": "session.update", "session": session}),
                                         server.config.server.max_event_bytes)
            settings = settings.apply(event.session)  # type: ignore[attr-defined]
        except p.ProtocolError as exc:
            error = exc.event()
            error["error"]["param"] = f"session.{exc.param}" if exc.param and not exc.param.startswith("session") \
                else exc.param
            return web.json_response(error, status=400)
    try:
        secret = auth.mint(seconds, session)
    except AuthError as exc:
        return exc.response()
    rendered = settings.render()
    rendered.pop("id", None)  # sessions get their ids when they start
    return web.json_response({"value": secret.value, "expires_at": int(secret.expires_at), "session": rendered})
