"""Call control (realtime/telephony/control.py) against local fake carrier REST APIs that check
each request: hang up after the goodbye played, cold and warm transfers."""
from __future__ import annotations

import asyncio
import base64
from urllib.parse import parse_qs

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.carriers_util import VONAGE_CONNECTED, asterisk_call, telnyx_call, vonage_call
from tests.realtime_util import fake_config, running_server, server_context, wait_until
from tests.telephony_util import twilio_call, utterance_8k


class FakeCarrierApi:
    """Records every request (method, path, headers, body) and answers 200."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.asked = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.server = TestServer(app, host="127.0.0.1", port=None)

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append({"method": request.method, "path": request.raw_path,
                              "auth": request.headers.get("Authorization"), "body": await request.text(),
                              "content_type": request.content_type})
        self.asked.set()
        return web.json_response({"data": {"result": "ok"}})

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


@pytest.fixture
async def carrier_api():
    api = FakeCarrierApi()
    await api.server.start_server()
    yield api
    await api.server.close()


def config(api: FakeCarrierApi):
    return fake_config(**{"server.audiosocket": {"host": "127.0.0.1", "port": 0}, "server.carriers": {
        "twilio": {"account_sid": "AC1", "auth_token": "secret", "api_base": api.url},
        "telnyx": {"api_key": "KEY1", "api_base": api.url}, "public_url": "https://agent.example"}})


async def post(server, path: str, body: dict) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.post(server.make_url(path), json=body) as resp:
        return resp.status, await resp.json(content_type=None)


def session_id(server) -> str:
    return next(iter(server_context(server).sessions)).id


async def test_twilio_hangs_up_after_the_goodbye_has_played(carrier_api) -> None:
    async with running_server(config(carrier_api)) as server, twilio_call(server) as call:
        await call.speak(utterance_8k())
        await call.wait_for(lambda m: m["event"] == "media", "the goodbye's audio")
        session = next(iter(server_context(server).sessions))
        asked = asyncio.create_task(post(server, f"/v1/telephony/calls/{session.id}/hangup", {"after_reply": True}))
        await carrier_api.asked.wait()
        # the reply had played to its end (its last mark came back) before the carrier was asked
        assert [t.role for t in session.context.turns] == ["user", "assistant"]
        assert session.context.turns[1].text.startswith("You said")
        status, body = await asked
        assert status == 200 and body["status"] == "hung_up"
        [req] = carrier_api.requests
        assert req["method"] == "POST" and req["path"] == "/2010-04-01/Accounts/AC1/Calls/CA1.json"
        assert req["auth"] == "Basic " + base64.b64encode(b"AC1:secret").decode()
        assert parse_qs(req["body"]) == {"Status": ["completed"]}
        await wait_until(lambda: call.ws.closed, what="the stream's close")
        assert call.close_reason == "hangup"
    await wait_until(lambda: not server_context(server).sessions, what="session cleanup")


@pytest.mark.parametrize("mode", ["cold", "warm"])
async def test_twilio_transfers_with_dial(carrier_api, mode: str) -> None:
    async with running_server(config(carrier_api)) as server, twilio_call(server) as call:
        await wait_until(lambda: server_context(server).sessions, what="the session")
        status, _ = await post(server, f"/v1/telephony/calls/{session_id(server)}/transfer",
                               {"to": "+15551234567", "mode": mode, "summary": "Ada, about her invoice"})
        assert status == 200
        [req] = carrier_api.requests
        twiml = parse_qs(req["body"])["Twiml"][0]
        if mode == "cold":
            assert twiml == "<Response><Dial>+15551234567</Dial></Response>"
        else:
            whisper = "https://agent.example/v1/telephony/twilio/whisper?text=Ada%2C%20about%20her%20invoice"
            assert twiml == f'<Response><Dial><Number url="{whisper}">+15551234567</Number></Dial></Response>'
            async with aiohttp.ClientSession() as http:
                async with http.get(server.make_url(whisper.removeprefix("https://agent.example"))) as resp:
                    assert await resp.text() == "<Response><Say>Ada, about her invoice</Say></Response>"
        await wait_until(lambda: call.ws.closed, what="the stream's close")
        assert call.close_reason == "transferred"


async def test_telnyx_call_control(carrier_api) -> None:
    async with running_server(config(carrier_api)) as server:
        async with telnyx_call(server) as call:
            await wait_until(lambda: server_context(server).sessions, what="the session")
            sid = session_id(server)
            status, body = await post(server, f"/v1/telephony/calls/{sid}/transfer", {"to": "+1555", "mode": "warm"})
            assert status == 501 and "cold only" in body["error"]
            status, _ = await post(server, f"/v1/telephony/calls/{sid}/transfer", {"to": "+1555"})
            assert status == 200
            await call.wait(lambda: call.closed_with is not None, "the close")
        [req] = carrier_api.requests
        assert req["path"] == "/v2/calls/v3:call-1/actions/transfer" and req["auth"] == "Bearer KEY1"
        assert req["body"] == '{"to": "+1555"}'
        async with telnyx_call(server) as call:
            await wait_until(lambda: server_context(server).sessions, what="the session")
            status, _ = await post(server, f"/v1/telephony/calls/{session_id(server)}/hangup", {})
            assert status == 200
            await call.wait(lambda: call.closed_with is not None, "the close")
        assert carrier_api.requests[-1]["path"] == "/v2/calls/v3:call-1/actions/hangup"


@pytest.fixture
def vonage_key(tmp_path):
    """A Vonage application's RSA key pair: the server signs with the private half."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "vonage.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path, key.public_key()


@pytest.mark.parametrize("mode", ["cold", "warm"])
async def test_vonage_transfers_and_hangs_up_with_a_signed_call_update(carrier_api, vonage_key, mode) -> None:
    import json

    import jwt
    key_file, public_key = vonage_key
    cfg = config(carrier_api)
    cfg.server.carriers = type(cfg.server.carriers).model_validate({
        **cfg.server.carriers.model_dump(),
        "vonage": {"application_id": "app-1", "private_key_file": str(key_file), "api_base": carrier_api.url}})
    async with running_server(cfg) as server:
        async with vonage_call(server, start=False) as call:
            await call.send({**VONAGE_CONNECTED, "uuid": "call-uuid-1"})
            await wait_until(lambda: server_context(server).sessions, what="the session")
            status, _ = await post(server, f"/v1/telephony/calls/{session_id(server)}/transfer",
                                   {"to": "+15551234567", "mode": mode, "summary": "Ada, about her invoice"})
            assert status == 200
            await call.wait(lambda: call.closed_with is not None, "the close")
        [req] = carrier_api.requests
        assert req["method"] == "PUT" and req["path"] == "/v1/calls/call-uuid-1"
        claims = jwt.decode(req["auth"].removeprefix("Bearer "), public_key, algorithms=["RS256"])
        assert claims["application_id"] == "app-1" and claims["exp"] > claims["iat"]
        body = json.loads(req["body"])
        assert body["action"] == "transfer" and body["destination"]["type"] == "ncco"
        [connect] = body["destination"]["ncco"]
        [endpoint] = connect["endpoint"]
        assert connect["action"] == "connect" and endpoint["type"] == "phone" and endpoint["number"] == "15551234567"
        if mode == "warm":
            whisper = endpoint["onAnswer"]["url"]
            assert whisper.startswith("https://agent.example/v1/telephony/vonage/whisper?")
            async with aiohttp.ClientSession() as http:
                async with http.get(server.make_url(whisper.removeprefix("https://agent.example"))) as resp:
                    assert await resp.json() == [{"action": "talk", "text": "Ada, about her invoice"}]
        else:
            assert "onAnswer" not in endpoint
        async with vonage_call(server, start=False) as call:
            await call.send({**VONAGE_CONNECTED, "uuid": "call-uuid-2"})
            await wait_until(lambda: server_context(server).sessions, what="the session")
            status, _ = await post(server, f"/v1/telephony/calls/{session_id(server)}/hangup", {})
            assert status == 200
            await call.wait(lambda: call.closed_with is not None, "the close")
        assert carrier_api.requests[-1]["path"] == "/v1/calls/call-uuid-2"
        assert json.loads(carrier_api.requests[-1]["body"]) == {"action": "hangup"}


def test_a_missing_vonage_key_file_is_a_config_error(carrier_api, tmp_path) -> None:
    from core.config import ConfigError
    from realtime.config import Config
    cfg = config(carrier_api)
    bad = {**cfg.model_dump(mode="json")}
    bad["server"]["carriers"]["vonage"] = {"application_id": "a", "private_key_file": str(tmp_path / "none.key")}
    with pytest.raises((ConfigError, ValueError), match="none.key: no such file"):
        Config.model_validate(bad)


async def test_audiosocket_hangup_and_bad_requests(carrier_api) -> None:
    async with running_server(config(carrier_api)) as server, asterisk_call(server) as call:
        await wait_until(lambda: server_context(server).sessions, what="the session")
        sid = session_id(server)
        assert (await post(server, "/v1/telephony/calls/nope/hangup", {}))[0] == 404
        status, body = await post(server, f"/v1/telephony/calls/{sid}/transfer", {"to": "+1555", "mode": "hot"})
        assert status == 400 and "cold or warm" in body["error"]
        status, body = await post(server, f"/v1/telephony/calls/{sid}/transfer", {"to": "+1555"})
        assert status == 501 and "AudioSocketCall" in body["error"]
        status, _ = await post(server, f"/v1/telephony/calls/{sid}/hangup", {"after_reply": False})
        assert status == 200
        await call.wait(lambda: call.closed_with is not None, "the close")
        assert {"kind": 0x00, "payload": b""} in call.controls
        assert not carrier_api.requests
        await wait_until(lambda: not server_context(server).sessions, what="session cleanup")
    await asyncio.sleep(0)


def model_tools_config(api: FakeCarrierApi, tool_call: dict):
    cfg = config(api)
    cfg.server.carriers.model_tools = True
    cfg.llm = type(cfg.llm).model_validate({**cfg.llm.model_dump(), "echo": False, "tool_call": tool_call})
    return cfg


async def test_the_model_hangs_up_by_calling_end_call(carrier_api) -> None:
    """The tool is offered on the call; the model calls it; the goodbye that follows the result
    plays; then Twilio is asked to complete the call."""
    async with running_server(model_tools_config(carrier_api, {"name": "end_call", "arguments": {}})) as server, \
            twilio_call(server) as call:
        await call.speak(utterance_8k())
        await carrier_api.asked.wait()
        session = next(iter(server_context(server).sessions))
        llm = server_context(server).stages["llm"]
        offered = {t.get("name") or t["function"]["name"] for t in llm.streams[0].tools}
        assert offered >= {"end_call", "transfer_call"}
        # the result was spoken ("The tool said: …") and had played before the carrier was asked
        assert session.context.turns[-1].role == "assistant"
        assert session.context.turns[-1].text.startswith("The tool said: The call ends after your goodbye")
        [req] = carrier_api.requests
        assert req["path"] == "/2010-04-01/Accounts/AC1/Calls/CA1.json"
        assert parse_qs(req["body"]) == {"Status": ["completed"]}
        await wait_until(lambda: call.ws.closed, what="the stream's close")


async def test_the_model_transfers_by_calling_transfer_call(carrier_api) -> None:
    tool = {"name": "transfer_call", "arguments": {"to": "+15551234567", "mode": "cold"}}
    async with running_server(model_tools_config(carrier_api, tool)) as server, twilio_call(server) as call:
        await call.speak(utterance_8k())
        await carrier_api.asked.wait()
        [req] = carrier_api.requests
        assert parse_qs(req["body"]) == {"Twiml": ["<Response><Dial>+15551234567</Dial></Response>"]}
        await wait_until(lambda: call.ws.closed, what="the stream's close")


async def test_call_tools_are_not_offered_unless_configured(carrier_api) -> None:
    cfg = config(carrier_api)
    cfg.llm = type(cfg.llm).model_validate({**cfg.llm.model_dump(), "echo": False,
                                            "tool_call": {"name": "end_call", "arguments": {}}})
    async with running_server(cfg) as server, twilio_call(server) as call:
        await call.speak(utterance_8k())
        await call.wait_for(lambda m: m["event"] == "media", "the reply")
        llm = server_context(server).stages["llm"]
        assert not llm.streams[0].tools and not carrier_api.requests
