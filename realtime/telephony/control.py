"""Call control: hang up once the goodbye has played, transfer cold or warm, as server-side
methods on a call and as HTTP routes for whoever decides (an operator, a tool the model calls):

  POST /v1/telephony/calls/{session_id}/hangup     {"after_reply": true}
  POST /v1/telephony/calls/{session_id}/transfer   {"to": "+15551234567", "mode": "cold"|"warm", "summary": "…"}
  GET  /v1/telephony/twilio/whisper?text=…         TwiML the transfer target hears before a warm transfer

Hanging up ends our side (AudioSocket: 0x00; WebSockets: close 1000 "hangup") and, where the
carrier's REST API is configured (server.carriers), the call itself (Twilio: the call's Status set
to completed; Telnyx: Call Control hangup; Vonage: a call update `hangup`). A transfer needs that
API: Twilio's call update with new TwiML, `<Dial>` (cold) or `<Dial><Number url=whisper>` (warm: the
target hears the summary first, then the caller is connected); Telnyx Call Control `transfer` (cold
only); Vonage's call update `transfer` to an NCCO `connect` (warm: the endpoint's `onAnswer` NCCO,
our whisper, plays to the target before the caller joins; the NCCO that opened our WebSocket must
pass the call's `uuid` in its headers). AudioSocket carries no call control but hang-up: a transfer
is Asterisk's dialplan's job after AudioSocket() returns. Elsewhere a transfer is answered 501 with
what is missing.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
import weakref
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape, quoteattr

import aiohttp
import jwt
from aiohttp import web

from controller.states import State

log = logging.getLogger(__name__)
CALLS: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()  # session id → PhoneCall
GOODBYE_TIMEOUT_S = 30.0


class ControlError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


async def wait_for_reply_to_play(call, timeout: float = GOODBYE_TIMEOUT_S) -> None:
    """Until the reply in progress (the goodbye) has played to its end at the caller."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while call.session.controller.state is State.BOT_REPLYING and loop.time() < deadline:
        await asyncio.sleep(0.05)


class CarrierApi:
    """The carrier's REST API for one call (config server.carriers); None where not configured."""

    def __init__(self, config) -> None:
        self.config = config

    async def _post(self, url: str, *, headers=None, data=None, json=None, method: str = "POST") -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.request(method, url, headers=headers, data=data, json=json) as resp:
                if resp.status >= 300:
                    raise ControlError(f"the carrier answered {resp.status}: {(await resp.text())[:200]}", 502)

    async def twilio_update(self, call_sid: str, **form: str) -> None:
        cfg = self.config.twilio
        url = f"{cfg.api_base}/2010-04-01/Accounts/{cfg.account_sid}/Calls/{call_sid}.json"
        token = base64.b64encode(f"{cfg.account_sid}:{cfg.auth_token}".encode()).decode()
        await self._post(url, headers={"Authorization": f"Basic {token}"}, data=form)

    async def telnyx_action(self, call_control_id: str, action: str, body: dict | None = None) -> None:
        cfg = self.config.telnyx
        url = f"{cfg.api_base}/v2/calls/{quote(call_control_id, safe=':')}/actions/{action}"
        await self._post(url, headers={"Authorization": f"Bearer {cfg.api_key}"}, json=body or {})


    async def vonage_update(self, call_uuid: str, body: dict) -> None:
        """PUT /v1/calls/{uuid}, with a JWT the application's private key signs (Vonage's scheme)."""
        cfg = self.config.vonage
        now = int(time.time())
        token = jwt.encode({"application_id": cfg.application_id, "iat": now, "exp": now + 300,
                            "jti": str(uuid.uuid4())}, cfg.private_key_file.read_text(), algorithm="RS256")
        await self._post(f"{cfg.api_base}/v1/calls/{quote(call_uuid, safe='')}", method="PUT",
                         headers={"Authorization": f"Bearer {token}"}, json=body)


def vonage_transfer(to: str, mode: str, summary: str, public_url: str | None) -> dict:
    """The call update that connects the caller to `to`, a phone number or a sip: URI."""
    endpoint = {"type": "sip", "uri": to} if to.startswith("sip:") else {"type": "phone", "number": to.lstrip("+")}
    if mode == "warm":
        if not public_url:
            raise ControlError("a warm transfer needs server.carriers.public_url (the target fetches the whisper)")
        endpoint["onAnswer"] = {"url": f"{public_url}/v1/telephony/vonage/whisper?text={quote(summary)}"}
    return {"action": "transfer", "destination": {"type": "ncco", "ncco": [{"action": "connect", "endpoint": [endpoint]}]}}


def transfer_twiml(to: str, mode: str, summary: str, public_url: str | None) -> str:
    if mode == "cold":
        return f"<Response><Dial>{escape(to)}</Dial></Response>"
    if not public_url:
        raise ControlError("a warm transfer needs server.carriers.public_url (the target fetches the whisper)")
    whisper = f"{public_url}/v1/telephony/twilio/whisper?text={quote(summary)}"
    return f"<Response><Dial><Number url={quoteattr(whisper)}>{escape(to)}</Number></Dial></Response>"


async def hang_up(call, after_reply: bool = True) -> None:
    if after_reply:
        await wait_for_reply_to_play(call)
    api = CarrierApi(call.session.server.config.server.carriers)
    kind = type(call).__name__
    if kind == "TwilioCall" and api.config is not None and api.config.twilio and call.call_sid:
        await api.twilio_update(call.call_sid, Status="completed")
    elif kind == "TelnyxCall" and api.config is not None and api.config.telnyx and call.call_id:
        await api.telnyx_action(call.call_id, "hangup")
    elif kind == "VonageCall" and api.config is not None and api.config.vonage and call.call_id:
        await api.vonage_update(call.call_id, {"action": "hangup"})
    await call.end("hangup")


async def transfer(call, to: str, mode: str = "cold", summary: str = "") -> None:
    if mode not in ("cold", "warm"):
        raise ControlError(f"mode {mode!r}: cold or warm")
    if not isinstance(to, str) or not to.strip():
        raise ControlError("'to': a phone number or SIP address")
    cfg = call.session.server.config.server.carriers
    api = CarrierApi(cfg)
    kind = type(call).__name__
    await wait_for_reply_to_play(call)  # "let me put you through" plays first
    if kind == "TwilioCall" and cfg is not None and cfg.twilio is not None and call.call_sid:
        twiml = transfer_twiml(to, mode, summary or "A caller is being transferred to you.", cfg.public_url)
        await api.twilio_update(call.call_sid, Twiml=twiml)
    elif kind == "TelnyxCall" and cfg is not None and cfg.telnyx is not None and call.call_id and mode == "cold":
        await api.telnyx_action(call.call_id, "transfer", {"to": to})
    elif kind == "VonageCall" and cfg is not None and cfg.vonage is not None and call.call_id:
        body = vonage_transfer(to, mode, summary or "A caller is being transferred to you.", cfg.public_url)
        await api.vonage_update(call.call_id, body)
    else:
        raise ControlError(f"{mode} transfer is not available for this call ({kind}: configure "
                           f"server.carriers; Telnyx: cold only; Vonage: needs the call's uuid; "
                           f"AudioSocket: Asterisk's dialplan transfers)", 501)
    await call.end("transferred")


def _call(request: web.Request):
    call = CALLS.get(request.match_info["session_id"])
    if call is None:
        raise web.HTTPNotFound(text='{"error": "no such call"}', content_type="application/json")
    return call


async def _body(request: web.Request) -> dict:
    try:
        body = await request.json() if request.can_read_body else {}
    except ValueError:
        raise web.HTTPBadRequest(text='{"error": "the body is not JSON"}', content_type="application/json") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text='{"error": "the body must be a JSON object"}', content_type="application/json")
    return body


async def hangup_route(request: web.Request) -> web.Response:
    call, body = _call(request), await _body(request)
    try:
        await hang_up(call, body.get("after_reply", True) is not False)
    except ControlError as exc:
        return web.json_response({"error": str(exc)}, status=exc.status)
    return web.json_response({"session_id": call.session.id, "status": "hung_up"})


async def transfer_route(request: web.Request) -> web.Response:
    call, body = _call(request), await _body(request)
    try:
        await transfer(call, body.get("to"), body.get("mode", "cold"), str(body.get("summary") or ""))
    except ControlError as exc:
        return web.json_response({"error": str(exc)}, status=exc.status)
    return web.json_response({"session_id": call.session.id, "status": "transferred"})


async def whisper_route(request: web.Request) -> web.Response:
    text = request.query.get("text", "")[:1000]
    return web.Response(text=f"<Response><Say>{escape(text)}</Say></Response>", content_type="text/xml")


async def vonage_whisper_route(request: web.Request) -> web.Response:
    """The NCCO a warm transfer's target hears before the caller joins."""
    return web.json_response([{"action": "talk", "text": request.query.get("text", "")[:1000]}])


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/telephony/calls/{session_id}/hangup", hangup_route)
    app.router.add_post("/v1/telephony/calls/{session_id}/transfer", transfer_route)
    app.router.add_get("/v1/telephony/twilio/whisper", whisper_route)
    app.router.add_get("/v1/telephony/vonage/whisper", vonage_whisper_route)
