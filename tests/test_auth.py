"""Auth on every endpoint (realtime/auth.py): API keys (Bearer, the openai SDK, the browser
subprotocol, the environment), client secrets, Twilio signatures, carrier stream tokens, Origin."""
from __future__ import annotations

import time

import aiohttp
import pytest
from openai import AsyncOpenAI

from core.config import ConfigError
from realtime.app import create_app
from realtime.auth import AUTH_KEY, Authenticator, twilio_signature
from tests.realtime_util import fake_config, running_server, server_context
from tests.test_openai_sdk import receive_until
from tests.webrtc_util import Caller, SyntheticMic, mic_audio

KEY = "sk-step-test-0123456789abcdef"
TWILIO_TOKEN = "twilio-auth-token-for-tests"


def auth_config(**more):
    return fake_config(**{"server.auth.enabled": True, "server.auth.api_keys": [KEY], **more})


def bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def first_event(ws: aiohttp.ClientWebSocketResponse) -> dict:
    msg = await ws.receive(timeout=30)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return msg.json()


async def handshake_status(http: aiohttp.ClientSession, url, **kwargs) -> int:
    try:
        ws = await http.ws_connect(url, **kwargs)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await ws.close()
    return 101


# -- the documented algorithm ------------------------------------------------------------------

def test_twilio_signature_matches_twilios_documented_example() -> None:
    # Twilio's security docs (and its helper libraries' tests): auth token 12345, this URL and
    # these POST parameters sign to RSOYDt4T1cUTdK1PDd93/VVr8B8=.
    params = {"CallSid": ["CA1234567890ABCDE"], "Caller": ["+14158675309"], "Digits": ["1234"],
              "From": ["+14158675309"], "To": ["+18005551212"]}
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert twilio_signature("12345", url, params) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert twilio_signature("12345", url, {**params, "Digits": ["1235"]}) != "RSOYDt4T1cUTdK1PDd93/VVr8B8="


def test_auth_on_without_any_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no API key"):
        create_app(fake_config(**{"server.auth.enabled": True}))


def test_keys_from_the_environment(monkeypatch) -> None:
    cfg = fake_config(**{"server.auth.enabled": True})
    auth = Authenticator(cfg, environ={"STEP_REALTIME_API_KEYS": " sk-env-one-0123456789 , sk-env-two-0123456789"})
    assert auth._is_key("sk-env-two-0123456789") and not auth._is_key("sk-env-three-012345")


def test_short_configured_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match="at least 16"):
        fake_config(**{"server.auth.api_keys": ["short"]})


# -- HTTP endpoints ----------------------------------------------------------------------------

async def test_probes_and_page_are_open_everything_else_needs_a_key() -> None:
    async with running_server(auth_config()) as server, aiohttp.ClientSession() as http:
        for path in ("/healthz", "/readyz", "/"):
            async with http.get(server.make_url(path)) as r:
                assert r.status == 200, path
        for method, path in (("GET", "/metrics"), ("GET", "/metrics.json"), ("GET", "/v1/realtime"),
                             ("POST", "/v1/realtime/calls"), ("POST", "/v1/realtime/client_secrets"),
                             ("GET", "/v1/telephony/twilio"), ("GET", "/v1/telephony/telnyx"),
                             ("GET", "/v1/telephony/vonage"), ("POST", "/v1/telephony/calls/x/hangup"),
                             ("POST", "/v1/telephony/calls/x/transfer"), ("GET", "/v1/telephony/twilio/whisper")):
            for headers in ({}, bearer("sk-wrong-key-0123456789")):
                async with http.request(method, server.make_url(path), headers=headers) as r:
                    body = await r.json()
                    assert r.status == 401, (method, path, r.status)
                    assert body["type"] == "error" and body["error"]["code"] in ("missing_credentials",
                                                                                 "invalid_api_key"), body
        async with http.get(server.make_url("/metrics"), headers=bearer()) as r:
            text = await r.text()
            assert r.status == 200 and "step_sessions_max" in text
            assert 'step_errors_total{code="missing_credentials"} 11.0' in text  # the refusals above
        async with http.get(server.make_url("/metrics.json"), headers=bearer()) as r:
            assert r.status == 200 and "sessions" in await r.json()


# -- the Realtime WebSocket --------------------------------------------------------------------

async def test_websocket_handshake_is_refused_401_without_a_valid_key() -> None:
    async with running_server(auth_config()) as server, aiohttp.ClientSession() as http:
        url = server.make_url("/v1/realtime")
        assert await handshake_status(http, url) == 401
        assert await handshake_status(http, url, headers=bearer("sk-wrong-key-0123456789")) == 401
        assert await handshake_status(http, url, protocols=("realtime", "openai-insecure-api-key.nope")) == 401
        assert not server_context(server).sessions  # nothing was started for them


async def test_websocket_accepts_a_bearer_header_and_the_browser_subprotocol() -> None:
    async with running_server(auth_config()) as server, aiohttp.ClientSession() as http:
        url = server.make_url("/v1/realtime")
        async with http.ws_connect(url, headers=bearer()) as ws:
            assert (await first_event(ws))["type"] == "session.created"
        async with http.ws_connect(url, protocols=("realtime", f"openai-insecure-api-key.{KEY}")) as ws:
            assert ws.protocol == "realtime"
            assert (await first_event(ws))["type"] == "session.created"


async def test_the_openai_sdk_connects_with_its_api_key_and_not_with_another() -> None:
    async with running_server(auth_config()) as server:
        client = AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=KEY)
        async with client.realtime.connect(model="step-realtime") as conn:
            assert (await receive_until(conn, "session.created", [])).session.model == "step-realtime"
        wrong = AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk-wrong-key-0123456789")
        with pytest.raises(Exception) as refused:
            async with wrong.realtime.connect(model="step-realtime") as conn:
                await receive_until(conn, "session.created", [])
        assert "401" in str(refused.value)


# -- client secrets ----------------------------------------------------------------------------

async def test_client_secret_is_minted_with_a_key_and_opens_sessions_with_its_config() -> None:
    async with running_server(auth_config()) as server, aiohttp.ClientSession() as http:
        url = server.make_url("/v1/realtime/client_secrets")
        body = {"expires_after": {"anchor": "created_at", "seconds": 120},
                "session": {"type": "realtime", "instructions": "Speak like a pirate."}}
        before = time.time()
        async with http.post(url, json=body, headers=bearer()) as r:
            assert r.status == 200, await r.text()
            secret = await r.json()
        assert secret["value"].startswith("ek_")
        assert before + 119 <= secret["expires_at"] <= time.time() + 121
        assert secret["session"]["instructions"] == "Speak like a pirate."
        # A client secret cannot mint more, nor read metrics: those take an API key.
        async with http.post(url, json={}, headers=bearer(secret["value"])) as r:
            assert r.status == 401
        async with http.get(server.make_url("/metrics"), headers=bearer(secret["value"])) as r:
            assert r.status == 401
        # The WebSocket, as a browser sends it; the secret's session config is in force.
        async with http.ws_connect(server.make_url("/v1/realtime"),
                                   protocols=("realtime", f"openai-insecure-api-key.{secret['value']}")) as ws:
            events = [await first_event(ws), await first_event(ws)]
            assert [e["type"] for e in events] == ["session.created", "session.updated"]
            assert events[1]["session"]["instructions"] == "Speak like a pirate."
        # The SDK takes it as its api_key, as OpenAI's docs have browsers do.
        client = AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=secret["value"])
        async with client.realtime.connect(model="step-realtime") as conn:
            await receive_until(conn, "session.created", [])
        # A WebRTC call with it.
        caller = Caller(SyntheticMic(mic_audio()))
        try:
            async with http.post(server.make_url("/v1/realtime/calls"), data=await caller.offer(),
                                 headers={"Content-Type": "application/sdp", **bearer(secret["value"])}) as r:
                assert r.status == 201, await r.text()
                await caller.answer(await r.text())
            updated = await caller.next("session.updated")
            assert updated["session"]["instructions"] == "Speak like a pirate."
        finally:
            await caller.close()


async def test_expired_forged_and_unknown_client_secrets_are_refused(monkeypatch) -> None:
    async with running_server(auth_config()) as server, aiohttp.ClientSession() as http:
        async with http.post(server.make_url("/v1/realtime/client_secrets"), headers=bearer(),
                             json={"expires_after": {"anchor": "created_at", "seconds": 10}}) as r:
            secret = await r.json()
        value = secret["value"]
        body, mac = value[3:].split(".")
        other = server.app[AUTH_KEY].mint(7200, {"type": "realtime", "instructions": "forged"}).value
        forged = f"ek_{other[3:].split('.')[0]}.{mac}"  # another payload under this MAC
        for token in ("ek_never_minted", "ek_!!.??", forged, value[:-2] + ("AA" if value[-2:] != "AA" else "BB")):
            async with http.get(server.make_url("/v1/realtime"), headers=bearer(token)) as r:
                assert r.status == 401 and (await r.json())["error"]["code"] == "invalid_client_secret", token
        async with http.get(server.make_url("/v1/realtime"), headers=bearer(value)) as r:
            assert r.status != 401  # still valid (a plain GET, not an upgrade: refused later, not by auth)
        monkeypatch.setattr("realtime.auth.time.time", lambda: secret["expires_at"] + 1)
        async with http.get(server.make_url("/v1/realtime"), headers=bearer(value)) as r:
            assert r.status == 401 and (await r.json())["error"]["code"] == "invalid_client_secret"


async def test_a_secret_minted_by_one_server_works_on_another_with_the_same_keys() -> None:
    """Workers behind a load balancer (serve --workers N): the page's call may reach any of them."""
    other_keys = auth_config(**{"server.auth.api_keys": ["sk-another-deployment-0123456789"]})
    async with running_server(auth_config()) as minting, running_server(auth_config()) as worker, \
            running_server(other_keys) as stranger, aiohttp.ClientSession() as http:
        async with http.post(minting.make_url("/v1/realtime/client_secrets"), headers=bearer(),
                             json={"session": {"type": "realtime", "instructions": "Across workers."}}) as r:
            value = (await r.json())["value"]
        async with http.ws_connect(worker.make_url("/v1/realtime"), headers=bearer(value)) as ws:
            events = [await first_event(ws), await first_event(ws)]
            assert events[1]["session"]["instructions"] == "Across workers."
        assert await handshake_status(http, stranger.make_url("/v1/realtime"), headers=bearer(value)) == 401


@pytest.mark.parametrize("body, param", [
    ({"expires_after": {"seconds": 5}}, "expires_after.seconds"),
    ({"expires_after": {"seconds": 8000}}, "expires_after.seconds"),
    ({"expires_after": {"anchor": "now", "seconds": 60}}, "expires_after.anchor"),
    ({"session": {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 7}}}}}, None),
    ({"session": "pirate"}, "session"),
    ({"session": {"type": "realtime", "instructions": "".join(f"{i:x}" for i in range(40_000))}}, None),  # too big
])
async def test_bad_client_secret_requests_get_400(body, param) -> None:
    async with running_server(auth_config()) as server, aiohttp.ClientSession() as http:
        async with http.post(server.make_url("/v1/realtime/client_secrets"), json=body, headers=bearer()) as r:
            error = (await r.json())["error"]
            assert r.status == 400 and error["message"], error
            if param is not None:
                assert error["param"] == param


# -- Origin ------------------------------------------------------------------------------------

@pytest.mark.parametrize("auth_on", [True, False])
async def test_browser_endpoints_take_only_allowed_origins(auth_on: bool) -> None:
    cfg = auth_config() if auth_on else fake_config()  # with auth off too: a web page must not drive it
    async with running_server(cfg) as server, aiohttp.ClientSession() as http:
        url, own = server.make_url("/v1/realtime"), f"http://127.0.0.1:{server.port}"
        headers = bearer() if auth_on else {}
        async with http.get(url, headers={**headers, "Origin": "https://evil.example"}) as r:
            assert r.status == 403 and (await r.json())["error"]["code"] == "origin_not_allowed"
        async with http.post(server.make_url("/v1/realtime/calls"),
                             headers={**headers, "Origin": "https://evil.example"}) as r:
            assert r.status == 403
        async with http.ws_connect(url, headers={**headers, "Origin": own}) as ws:  # the server's own page
            assert (await first_event(ws))["type"] == "session.created"
        async with http.ws_connect(url, headers=headers) as ws:  # no Origin: not a browser
            assert (await first_event(ws))["type"] == "session.created"


async def test_allowed_origins_list() -> None:
    cfg = auth_config(**{"server.auth.allowed_origins": ["https://app.example.org"]})
    async with running_server(cfg) as server, aiohttp.ClientSession() as http:
        url = server.make_url("/v1/realtime")
        async with http.ws_connect(url, headers={**bearer(), "Origin": "https://app.example.org"}) as ws:
            assert (await first_event(ws))["type"] == "session.created"
        for origin in ("https://evil.example", f"http://127.0.0.1:{server.port}"):
            assert await handshake_status(http, url, headers={**bearer(), "Origin": origin}) == 403


# -- telephony ---------------------------------------------------------------------------------

async def test_twilio_stream_needs_its_signature_or_a_key() -> None:
    cfg = auth_config(**{"server.auth.twilio_auth_token": TWILIO_TOKEN})
    async with running_server(cfg) as server, aiohttp.ClientSession() as http:
        url = server.make_url("/v1/telephony/twilio?callerId=42")
        # Twilio signs the upgrade request's URL (wss:// as given in the TwiML; ws:// here).
        signed = twilio_signature(TWILIO_TOKEN, f"ws://127.0.0.1:{server.port}/v1/telephony/twilio?callerId=42")
        assert await handshake_status(http, url, headers={"X-Twilio-Signature": signed}) == 101
        other = twilio_signature("another-accounts-token", f"ws://127.0.0.1:{server.port}/v1/telephony/twilio")
        assert await handshake_status(http, url, headers={"X-Twilio-Signature": other}) == 403
        wrong_url = twilio_signature(TWILIO_TOKEN, f"ws://127.0.0.1:{server.port}/v1/telephony/twilio?callerId=43")
        assert await handshake_status(http, url, headers={"X-Twilio-Signature": wrong_url}) == 403
        assert await handshake_status(http, url) == 401
        assert await handshake_status(http, server.make_url(f"/v1/telephony/twilio?token={KEY}")) == 101
        # The whisper TwiML that Twilio fetches is checked the same way.
        whisper = f"http://127.0.0.1:{server.port}/v1/telephony/twilio/whisper?text=hi"
        async with http.get(whisper, headers={"X-Twilio-Signature": twilio_signature(TWILIO_TOKEN, whisper)}) as r:
            assert r.status == 200, await r.text()
        async with http.get(whisper, headers={"X-Twilio-Signature": other}) as r:
            assert r.status == 403


async def test_twilio_signature_behind_a_proxy_uses_the_public_url() -> None:
    cfg = auth_config(**{"server.auth.twilio_auth_token": TWILIO_TOKEN,
                         "server.auth.public_url": "https://voice.example.org"})
    async with running_server(cfg) as server, aiohttp.ClientSession() as http:
        url = server.make_url("/v1/telephony/twilio")
        signed = twilio_signature(TWILIO_TOKEN, "wss://voice.example.org/v1/telephony/twilio")
        assert await handshake_status(http, url, headers={"X-Twilio-Signature": signed}) == 101
        local = twilio_signature(TWILIO_TOKEN, f"ws://127.0.0.1:{server.port}/v1/telephony/twilio")
        assert await handshake_status(http, url, headers={"X-Twilio-Signature": local}) == 403


@pytest.mark.parametrize("route", ["/v1/telephony/telnyx", "/v1/telephony/vonage"])
async def test_carrier_streams_need_a_key_in_the_url_or_the_authorization_header(route: str) -> None:
    async with running_server(auth_config()) as server, aiohttp.ClientSession() as http:
        assert await handshake_status(http, server.make_url(route)) == 401
        assert await handshake_status(http, server.make_url(f"{route}?token=sk-wrong-key-0123456789")) == 401
        assert await handshake_status(http, server.make_url(f"{route}?token={KEY}")) == 101
        # Vonage's NCCO websocket endpoint can send it as a header: authorization {type: custom, value}.
        assert await handshake_status(http, server.make_url(route), headers=bearer()) == 101


def test_serve_refuses_to_start_with_auth_on_and_no_key() -> None:
    import os
    import subprocess
    import sys

    from tests.realtime_util import FAKE_CONFIG, REPO
    env = {k: v for k, v in os.environ.items() if k != "STEP_REALTIME_API_KEYS"}
    proc = subprocess.run([sys.executable, "-m", "realtime.cli", "serve", "--config", str(FAKE_CONFIG),
                           "--set", "server.auth.enabled=true"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no API key is configured" in proc.stderr and "STEP_REALTIME_API_KEYS" in proc.stderr


async def test_the_openai_sdks_calls_create_sends_its_key() -> None:
    async with running_server(auth_config()) as server:
        for key, ok in (("sk-wrong-key-0123456789", False), (KEY, True)):
            caller = Caller(SyntheticMic(mic_audio(0.0, 0.0)))
            try:
                async with AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=key) as client:
                    if not ok:
                        with pytest.raises(Exception, match="401|invalid_api_key"):
                            await client.realtime.calls.create(sdp=await caller.offer())
                        continue
                    answer = await client.realtime.calls.create(sdp=await caller.offer())
                await caller.answer(answer.text)
                await caller.next("session.created")
            finally:
                await caller.close()


async def test_a_workers_admin_drain_needs_a_key() -> None:
    async with running_server(auth_config(**{"server.agent_port": 0})) as server, aiohttp.ClientSession() as http:
        async with http.post(server.make_url("/admin/drain")) as r:
            assert r.status == 401
        assert not server_context(server).admission.draining
        async with http.post(server.make_url("/admin/drain"), headers=bearer()) as r:
            assert r.status == 200
        assert server_context(server).admission.draining
