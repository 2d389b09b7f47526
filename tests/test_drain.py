"""Draining: no new sessions (503, /readyz "draining") while the calls in progress go on for the
grace period, then they get `step.session_ending` and an `error` before the socket closes. As a
real `step-realtime serve` process: SIGTERM, readiness false, the session ended, exit code 0."""
from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys

import aiohttp

from realtime.drain import drain
from realtime.ws import close_all
from tests.realtime_util import (
    FAKE_CONFIG, REPO, WAIT, running_server, server_context, utterance, wait_until, ws_client,
)
from tests.telephony_util import ROUTE, twilio_call


async def test_drain_refuses_new_sessions_and_ends_the_open_ones() -> None:
    async with running_server() as server, ws_client(server) as c, aiohttp.ClientSession() as http:
        ctx = server_context(server)
        hurry = asyncio.Event()
        draining = asyncio.create_task(drain(ctx, grace_s=WAIT * 10, hurry=hurry))
        async with http.get(server.make_url("/readyz")) as r:
            assert r.status == 503 and (await r.json())["reason"] == "draining"
        async with http.get(server.make_url("/healthz")) as r:
            assert r.status == 200  # alive: only readiness drops
        async with http.get(server.make_url("/v1/realtime")) as r:  # refused before the upgrade
            assert r.status == 503 and "shutting down" in (await r.json())["error"]["message"]
        await c.send_audio(utterance())  # the call in progress goes on
        assert (await c.next("response.done"))["response"]["status"] == "completed"
        hurry.set()  # stands for the end of the grace period
        await asyncio.wait_for(draining, WAIT)
        ending = await c.next("step.session_ending")
        err = await c.next("error")
        assert c.index(ending) < c.index(err) and err["error"]["code"] == "session_ending"
        assert "shutting down" in err["error"]["message"]


async def test_drain_returns_when_the_last_session_ends() -> None:
    async with running_server() as server:
        ctx = server_context(server)
        async with ws_client(server):
            draining = asyncio.create_task(drain(ctx, grace_s=WAIT * 10))
            await asyncio.sleep(0.2)
            assert not draining.done()
        await asyncio.wait_for(draining, WAIT)  # long before the grace period is over
        assert not ctx.sessions


async def test_drain_grace_period_runs_out() -> None:
    async with running_server() as server, ws_client(server) as c:
        await drain(server_context(server), grace_s=0.2)
        await c.next("step.session_ending")


def test_sigterm_drains_then_exits_0() -> None:
    grace_s = 6  # ample for a few local HTTP requests while the session is still open
    with subprocess.Popen([sys.executable, "-m", "realtime.cli", "serve", "--config", str(FAKE_CONFIG),
                           "--host", "127.0.0.1", "--port", "0", "--set", f"server.drain_grace_s={grace_s}"],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            line = proc.stdout.readline()
            match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
            assert match, f"no URL in {line!r}"
            asyncio.run(_sigterm_with_a_session_open(proc, int(match.group(1))))
            assert proc.wait(WAIT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def _sigterm_with_a_session_open(proc: subprocess.Popen, port: int) -> None:
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{base}/v1/realtime") as ws:
        assert json.loads((await ws.receive()).data)["type"] == "session.created"
        async with http.get(f"{base}/readyz") as r:
            assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        while True:  # the signal is handled asynchronously: readiness drops soon after
            async with http.get(f"{base}/readyz") as r:
                if r.status == 503:
                    assert (await r.json())["reason"] == "draining"
                    break
            await asyncio.sleep(0.05)
        events = []
        while True:
            msg = await asyncio.wait_for(ws.receive(), WAIT)
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            events.append(json.loads(msg.data)["type"])
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
        assert events[-2:] == ["step.session_ending", "error"]


async def test_a_phone_call_is_closed_after_the_grace_period() -> None:
    async with running_server() as server, twilio_call(server) as call, aiohttp.ClientSession() as http:
        ctx = server_context(server)
        await drain(ctx, grace_s=0.2)
        async with http.get(server.make_url(ROUTE)) as r:  # no new calls
            assert r.status == 503
        assert len(ctx.sessions) == 1  # the drain only warned it (a phone line has no reader for events)
        await close_all(server.app)  # what the shutdown after the drain does to open sockets
        await asyncio.wait_for(asyncio.shield(call._reader), WAIT)
        assert call.close_reason == "server shutdown"
        await wait_until(lambda: not ctx.sessions, what="the call's session to end")
