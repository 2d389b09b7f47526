"""The worker's side of HAProxy's agent-check (realtime/agent_check.py): the line it answers on its
TCP port follows the server's readiness, spare capacity and drain state, and the admin drain
switch; and the entry's HAProxy config generated from ours is one HAProxy accepts."""
from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from realtime.agent_check import AGENT_KEY, agent_reply
from realtime.cluster import WorkerSpec, haproxy_config, plan_ports
from realtime.drain import drain
from tests.cluster_util import need_haproxy
from tests.realtime_util import FAKE_CONFIG, fake_config, running_server, server_context, ws_client


async def ask_agent(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return (await asyncio.wait_for(reader.read(), 10)).decode("ascii")
    finally:
        writer.close()


async def test_the_agent_reports_spare_capacity_then_drain_when_full() -> None:
    cfg = fake_config(**{"server.agent_port": 0, "server.max_sessions": 4})
    async with running_server(cfg) as server, aiohttp.ClientSession() as http:
        port = server.app[AGENT_KEY].port
        assert await ask_agent(port) == "up ready 100%\n"
        async with ws_client(server), ws_client(server):
            assert await ask_agent(port) == "up ready 50%\n"  # 2 of 4 places taken
            async with ws_client(server), ws_client(server):
                assert await ask_agent(port) == "up drain\n"  # full: nothing new, still UP for its calls
                async with http.get(server.make_url("/readyz")) as r:
                    assert r.status == 503
        assert await ask_agent(port) == "up ready 100%\n"


async def test_admin_drain_and_resume() -> None:
    async with running_server(fake_config(**{"server.agent_port": 0})) as server, aiohttp.ClientSession() as http:
        port = server.app[AGENT_KEY].port
        async with ws_client(server) as c:
            async with http.post(server.make_url("/admin/drain")) as r:
                assert r.status == 200 and (await r.json()) == {"draining": True, "sessions": 1}
            assert await ask_agent(port) == "up drain\n"
            async with http.get(server.make_url("/v1/realtime")) as r:  # no new session here
                assert r.status == 503
            await c.send({"type": "session.update", "session": {"type": "realtime", "instructions": "Hi."}})
            assert (await c.next("session.updated"))["session"]["instructions"] == "Hi."  # its own call goes on
            async with http.post(server.make_url("/admin/resume")) as r:
                assert r.status == 200 and (await r.json())["draining"] is False
            assert (await ask_agent(port)).startswith("up ready ")


async def test_a_sigterm_drain_cannot_be_resumed() -> None:
    async with running_server(fake_config(**{"server.agent_port": 0})) as server, aiohttp.ClientSession() as http:
        await drain(server_context(server), grace_s=0)
        async with http.post(server.make_url("/admin/resume")) as r:
            assert r.status == 409
        assert await ask_agent(server.app[AGENT_KEY].port) == "up drain\n"


def test_agent_reply_while_starting_and_while_the_llm_is_down() -> None:
    from realtime.session import ServerContext

    class DownLLM:
        available = False

    ctx = ServerContext(fake_config(), {})
    assert agent_reply(ctx) == "down#starting\n"
    ctx.ready, ctx.stages = True, {"llm": DownLLM()}
    assert agent_reply(ctx) == "down#llm_unavailable\n"


async def test_a_lone_server_has_no_admin_routes_and_no_agent() -> None:
    async with running_server() as server, aiohttp.ClientSession() as http:
        assert AGENT_KEY not in server.app
        async with http.post(server.make_url("/admin/drain")) as r:
            assert r.status in (404, 405)
        assert not server_context(server).admission.draining


def test_the_generated_haproxy_config_is_valid(tmp_path: Path) -> None:
    need_haproxy()
    cfg = fake_config(**{"server.port": 8080})
    entry, ports, agents = plan_ports(cfg, 3, None, None)
    assert (entry, ports, agents) == (8080, [8081, 8082, 8083], [9081, 9082, 9083])
    specs = [WorkerSpec(f"w{i}", "127.0.0.1", ports[i], agents[i], "configs/fake.yaml") for i in range(3)]
    text = haproxy_config(cfg, entry, specs, tmp_path / "stats.sock")
    assert "balance leastconn" in text and "bind 127.0.0.1:8080" in text
    for s in specs:
        assert f"server {s.name} 127.0.0.1:{s.port} agent-addr 127.0.0.1 agent-port {s.agent_port}" in text
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    result = subprocess.run([shutil.which("haproxy") or "/usr/sbin/haproxy", "-c", "-f", str(path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_the_cli_prints_the_config_and_refuses_haproxy_without_workers(capsys: pytest.CaptureFixture) -> None:
    from realtime.cli import main

    assert main(["serve", "--config", str(FAKE_CONFIG), "--port", "7000", "--workers", "2",
                 "--print-haproxy-config"]) == 0
    out = capsys.readouterr().out
    assert "server w1 127.0.0.1:7002 agent-addr 127.0.0.1 agent-port 8002" in out
    assert main(["serve", "--config", str(FAKE_CONFIG), "--haproxy"]) == 2
    assert "--workers" in capsys.readouterr().err


async def test_the_entrys_health_checks_stay_out_of_the_access_log(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    async with running_server(fake_config(**{"server.agent_port": 0})) as server, aiohttp.ClientSession() as http:
        with caplog.at_level(logging.INFO, logger="aiohttp.access"):
            for path in ("/healthz", "/readyz"):
                async with http.get(server.make_url(path)):
                    pass
            await asyncio.sleep(0.1)
    logged = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert any("GET /readyz " in m for m in logged) and not any("GET /healthz " in m for m in logged)
