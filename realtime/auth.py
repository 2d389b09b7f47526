"""Who may use the server: API keys, client secrets, Twilio signatures, an Origin allow-list.

Every route but /healthz, /readyz and the web client's files is checked by one middleware,
before its handler runs, so a refusal comes before any upgrade or media (HTTP 401/403 with a
Realtime `error` body; a WebSocket handshake is answered 401 and never upgraded).

  credentials                       accepted on
  API key (server.auth.api_keys,    every protected route
    $STEP_REALTIME_API_KEYS)
  client secret (ek_…, minted by    the Realtime WebSocket, POST /v1/realtime/calls and its hangup
    POST /v1/realtime/client_secrets; signed, so every server with the same keys accepts it)
  X-Twilio-Signature               the Twilio routes (stream upgrade, whisper TwiML)
  ?token=<API key> in the URL      the carriers' stream URLs (a carrier cannot always set headers)

A key is read from `Authorization: Bearer <key>` (the openai SDK, curl, Vonage's NCCO
`authorization`), or from a WebSocket subprotocol `openai-insecure-api-key.<key>` (browsers, which
cannot set headers on a WebSocket). Comparisons are constant-time (hmac.compare_digest).

Browser endpoints also check `Origin` (auth on or off: with auth off on loopback, a web page
must still not be able to drive a local server): a request that carries one must come from
server.auth.allowed_origins, or from this server's own origin when that list is empty.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web

from realtime.config import Config
from realtime.limits import RateLimiter, client_ip
from realtime.protocol import error_event

log = logging.getLogger(__name__)
SUBPROTOCOL_PREFIX = "openai-insecure-api-key."
CLIENT_SECRET_PREFIX = "ek_"
MAX_SECRET_PAYLOAD = 3000  # bytes before base64: the secret travels in a header (8 KiB at most)

# Route (aiohttp's canonical path) → what it accepts. Routes not listed are open (web client files).
OPEN = "open"
KEY = "key"                   # an API key
KEY_OR_SECRET = "browser"     # an API key or a client secret; Origin checked
TWILIO = "twilio"             # a Twilio signature, or an API key (header or ?token=)
CARRIER = "carrier"           # an API key (header or ?token=)
ROUTES = {
    "/healthz": OPEN, "/readyz": OPEN,
    "/metrics": KEY, "/metrics.json": KEY,
    "/v1/realtime": KEY_OR_SECRET,
    "/v1/realtime/calls": KEY_OR_SECRET,
    "/v1/realtime/calls/{call_id}/hangup": KEY_OR_SECRET,
    "/v1/realtime/client_secrets": KEY,
    "/v1/telephony/twilio": TWILIO,
    "/v1/telephony/twilio/whisper": TWILIO,
    "/v1/telephony/telnyx": CARRIER,
    "/v1/telephony/vonage": CARRIER,
    "/v1/telephony/calls/{session_id}/hangup": KEY,
    "/v1/telephony/calls/{session_id}/transfer": KEY,
    "/admin/drain": KEY, "/admin/resume": KEY,  # a worker's (realtime/agent_check.py)
}
NEW_SESSION_ROUTES = {"/v1/realtime", "/v1/realtime/calls", "/v1/realtime/client_secrets"}
BROWSER_ROUTES = {path for path, kind in ROUTES.items() if kind == KEY_OR_SECRET} | {"/v1/realtime/client_secrets"}


class AuthError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code

    def response(self) -> web.Response:
        kind = "invalid_request_error"
        headers = {"WWW-Authenticate": 'Bearer realm="step-realtime"'} if self.status == 401 else None
        return web.json_response(error_event(kind, self.code, str(self)), status=self.status, headers=headers)


@dataclass
class ClientSecret:
    value: str
    expires_at: float  # seconds since the epoch
    session: dict[str, Any] | None  # a session config applied to sessions started with it


@dataclass
class Grant:
    """What a request was allowed by: `session` is a client secret's session config, if any."""
    by: str  # "api_key", "client_secret", "twilio_signature", "none" (auth off)
    session: dict[str, Any] | None = None


def twilio_signature(auth_token: str, url: str, params: dict[str, list[str]] | None = None) -> str:
    """Twilio's X-Twilio-Signature: base64(HMAC-SHA1(auth token, URL + each POST parameter's name
    and value, sorted by name (then value), concatenated without separators))."""
    data = url
    for name in sorted(params or {}):
        for value in sorted(params[name]):
            data += name + value
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _url_variants(url: str) -> set[str]:
    """The URL as Twilio may have signed it: with and without the default port (as Twilio's own
    validators try), under the http(s) and ws(s) schemes (a stream's URL is wss://)."""
    parts = urlsplit(url)
    secure = parts.scheme in ("https", "wss")
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    default = 443 if secure else 80
    ports = {parts.port or default}
    out = set()
    for scheme in (("https", "wss") if secure else ("http", "ws")):
        for port in ports:
            for netloc in (f"{host}:{port}", host if port == default else f"{host}:{port}"):
                out.add(urlunsplit((scheme, netloc, parts.path, parts.query, "")))
    return out


class Authenticator:
    def __init__(self, config: Config, environ: dict[str, str] | None = None) -> None:
        cfg = config.server.auth
        env = os.environ if environ is None else environ
        self.enabled = cfg.enabled
        self.keys = [k for k in cfg.api_keys] + [k.strip() for k in env.get(cfg.api_keys_env, "").split(",")
                                                 if k.strip()]
        if self.enabled and not self.keys:
            from core.config import ConfigError
            raise ConfigError(f"server.auth is on but no API key is configured: set server.auth.api_keys or "
                              f"${cfg.api_keys_env} (comma-separated), or server.auth.enabled: false for local "
                              f"development on loopback")
        carriers = config.server.carriers
        self.twilio_token = cfg.twilio_auth_token or (carriers.twilio.auth_token if carriers and carriers.twilio
                                                      else None)
        self.public_url = cfg.public_url or (carriers.public_url if carriers else None)
        self.allowed_origins = [o.rstrip("/") for o in cfg.allowed_origins]
        self.ttl_s = cfg.client_secret_ttl_s
        # Client secrets are signed, not stored: any server (every worker of a cluster) holding the
        # same API keys accepts the ones any of them minted. Changing the keys revokes them all.
        self._signing_key = hmac.new(b"step-realtime client secrets", "\n".join(sorted(self.keys)).encode(),
                                     hashlib.sha256).digest()
        self.limiter = RateLimiter(config.server.limits.sessions_per_ip_per_minute)
        self.trust_forwarded_for = config.server.limits.trust_forwarded_for

    # -- client secrets ------------------------------------------------------------------------

    def mint(self, ttl_s: int | None = None, session: dict[str, Any] | None = None) -> ClientSecret:
        """ek_<payload>.<mac>: the payload (expiry, a nonce, the session config; compressed JSON)
        signed with HMAC-SHA256 under a key derived from the API keys."""
        expires_at = int(time.time() + (ttl_s or self.ttl_s))
        payload = zlib.compress(json.dumps({"exp": expires_at, "n": secrets.token_urlsafe(9), "s": session},
                                           separators=(",", ":")).encode())
        if len(payload) > MAX_SECRET_PAYLOAD:
            raise AuthError(400, "invalid_value", f"the session config is too large for a client secret (at most "
                                                  f"{MAX_SECRET_PAYLOAD} bytes compressed); send the rest with "
                                                  "session.update once connected")
        mac = hmac.new(self._signing_key, payload, hashlib.sha256).digest()
        return ClientSecret(CLIENT_SECRET_PREFIX + _b64(payload) + "." + _b64(mac), expires_at, session)

    def verify_secret(self, token: str) -> ClientSecret | None:
        """The secret's contents if it is ours and unexpired, else None."""
        body, _, mac = token[len(CLIENT_SECRET_PREFIX):].partition(".")
        try:
            payload, given = _unb64(body), _unb64(mac)
        except ValueError:
            return None
        expected = hmac.new(self._signing_key, payload, hashlib.sha256).digest()
        if not hmac.compare_digest(given, expected):
            return None
        data = json.loads(zlib.decompress(payload))
        if data["exp"] <= time.time():
            return None
        return ClientSecret(token, data["exp"], data["s"])

    # -- checking a request --------------------------------------------------------------------

    def check(self, request: web.Request, kind: str) -> Grant:
        """The request's Grant, or AuthError (401: no or wrong credentials; 403: Origin)."""
        route = _route(request)
        if route in BROWSER_ROUTES:
            self._check_origin(request)
        if not self.enabled:
            return Grant("none")
        token = _bearer(request)
        if kind in (TWILIO, CARRIER) and token is None:
            token = request.query.get("token")
        if token is not None:
            if self._is_key(token):
                return Grant("api_key")
            if kind == KEY_OR_SECRET and token.startswith(CLIENT_SECRET_PREFIX):
                secret = self.verify_secret(token)
                if secret is not None:
                    return Grant("client_secret", secret.session)
                raise AuthError(401, "invalid_client_secret", "the client secret is unknown or has expired; "
                                                              "get a new one (POST /v1/realtime/client_secrets)")
        if kind == TWILIO and self.twilio_token is not None and "X-Twilio-Signature" in request.headers:
            if self._twilio_signed(request):
                return Grant("twilio_signature")
            raise AuthError(403, "invalid_signature", "X-Twilio-Signature does not match this request "
                                                      "(check server.auth.public_url behind a proxy)")
        if token is None:
            how = {KEY: "an API key", KEY_OR_SECRET: "an API key or a client secret",
                   TWILIO: "X-Twilio-Signature or an API key", CARRIER: "an API key"}[kind]
            raise AuthError(401, "missing_credentials", f"this endpoint needs {how}: send "
                                                        "'Authorization: Bearer <key>'" +
                            (" or add ?token=<key> to the stream URL" if kind in (TWILIO, CARRIER) else ""))
        raise AuthError(401, "invalid_api_key", "the API key is not valid")

    def _is_key(self, token: str) -> bool:
        given = token.encode()
        found = False
        for key in self.keys:  # every key compared, in constant time each
            found |= hmac.compare_digest(given, key.encode())
        return found

    def _twilio_signed(self, request: web.Request, params: dict[str, list[str]] | None = None) -> bool:
        assert self.twilio_token is not None
        given = request.headers.get("X-Twilio-Signature", "")
        if self.public_url:
            base = urlsplit(self.public_url)
            url = urlunsplit((base.scheme, base.netloc, request.path, request.query_string, ""))
        else:
            url = str(request.url)
        params = params if params is not None else request.get(TWILIO_FORM_KEY)
        return any(hmac.compare_digest(given.encode(), twilio_signature(self.twilio_token, u, params).encode())
                   for u in _url_variants(url))

    def _check_origin(self, request: web.Request) -> None:
        origin = request.headers.get("Origin")
        if origin is None or "*" in self.allowed_origins:
            return  # not a browser (browsers always send Origin on these requests)
        origin = origin.rstrip("/")
        if self.allowed_origins:
            if origin in self.allowed_origins:
                return
        else:  # this server's own page
            parsed = urlsplit(origin)
            if parsed.netloc and parsed.netloc.lower() == request.host.lower():
                return
        raise AuthError(403, "origin_not_allowed", f"Origin {origin} is not allowed here "
                                                   "(server.auth.allowed_origins)")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")  # token characters (a subprotocol may carry it)


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError(str(exc)) from None


def _route(request: web.Request) -> str | None:
    info = request.match_info
    return info.route.resource.canonical if info.route.resource is not None else None


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    for protocol in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
        protocol = protocol.strip()
        if protocol.startswith(SUBPROTOCOL_PREFIX) and len(protocol) > len(SUBPROTOCOL_PREFIX):
            return protocol[len(SUBPROTOCOL_PREFIX):]
    return None


AUTH_KEY = web.AppKey("auth", Authenticator)
GRANT_KEY = web.RequestKey("auth_grant", Grant)
TWILIO_FORM_KEY = web.RequestKey("twilio_form", dict)


def _count(request: web.Request, code: str) -> None:
    """Refusals count in step_errors_total by code, as the error events do."""
    from realtime.ws import SERVER_KEY  # (ws.py imports this module)
    server = request.app.get(SERVER_KEY)
    if server is not None:
        server.metrics.count_error(code)


@web.middleware
async def middleware(request: web.Request, handler):
    auth = request.app[AUTH_KEY]
    route = _route(request)
    kind = ROUTES.get(route or "")
    if kind is None or kind == OPEN:
        return await handler(request)
    if route in NEW_SESSION_ROUTES:
        wait_s = auth.limiter.hit(client_ip(request, auth.trust_forwarded_for))
        if wait_s is not None:
            _count(request, "rate_limit_exceeded")
            return web.json_response(
                error_event("invalid_request_error", "rate_limit_exceeded",
                            f"too many new sessions from this address; try again in {wait_s} s"),
                status=429, headers={"Retry-After": str(wait_s)})
    if kind == TWILIO and request.method == "POST" and auth.twilio_token is not None:
        form = await request.post()  # a webhook's parameters are part of its signature
        request[TWILIO_FORM_KEY] = {k: [str(v) for v in form.getall(k)] for k in set(form.keys())}
    try:
        request[GRANT_KEY] = auth.check(request, kind)
    except AuthError as exc:
        log.info("refused %s %s from %s: %s", request.method, request.path, request.remote, exc)
        _count(request, exc.code)
        return exc.response()
    return await handler(request)


def grant(request: web.Request) -> Grant:
    return request.get(GRANT_KEY) or Grant("none")
