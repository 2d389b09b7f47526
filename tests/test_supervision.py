"""The bundled LLM server is supervised: when the child dies it is started again (on the same
port), replies in flight end with an `error` event and a failed response.done, the session goes
on, and the next turn is answered once the server is back.

The fast tests run a stand-in `llama-server` (a tiny HTTP server answering /health); the
integration test kills the real one with SIGKILL in the middle of a reply."""
from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from llm.llama_server import LlamaServer
from tests.realtime_util import WAIT, fake_config, running_server, server_context, utterance, wait_until, ws_client

STAND_IN = '''
import http.server, sys
port = int(sys.argv[sys.argv.index("--port") + 1])
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"{}")
    def log_message(self, *args): pass
http.server.HTTPServer.allow_reuse_address = True
http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
'''


def _stand_in(tmp_path: Path) -> LlamaServer:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    binary = tmp_path / "llama-server"
    binary.write_text(f"#!/bin/sh\nexec {sys.executable} {script} \"$@\"\n")
    binary.chmod(0o755)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    return LlamaServer(model, "stand-in", binary=binary, log_path=tmp_path / "log", startup_timeout_s=WAIT,
                       restart_backoff_s=(0.05, 0.2))


async def test_a_dead_child_is_restarted_on_the_same_port(tmp_path: Path) -> None:
    server = _stand_in(tmp_path)
    await server.start()
    try:
        first = server._proc
        port = server.port
        os.kill(first.pid, signal.SIGKILL)
        await wait_until(lambda: server.restarts == 1 and server.running, what="the restart")
        assert server._proc is not first and server.port == port
        os.kill(server._proc.pid, signal.SIGKILL)  # and again: supervision goes on
        await wait_until(lambda: server.restarts == 2 and server.running, what="the second restart")
    finally:
        await server.stop()
    assert not server.running and server._supervisor is None


async def test_a_failing_restart_is_retried(tmp_path: Path) -> None:
    server = _stand_in(tmp_path)
    await server.start()
    try:
        model = server.model_path
        model.rename(model.with_suffix(".away"))  # restarts fail ("no model file") until it is back
        os.kill(server._proc.pid, signal.SIGKILL)
        await wait_until(lambda: not server.running, what="the child to die")
        await asyncio.sleep(0.5)  # several failed tries (backoff 0.05 s doubling to 0.2 s)
        assert server.restarts == 0 and not server.running
        model.with_suffix(".away").rename(model)
        await wait_until(lambda: server.restarts == 1 and server.running, what="the restart")
    finally:
        await server.stop()


async def test_stop_is_not_a_crash(tmp_path: Path) -> None:
    server = _stand_in(tmp_path)
    await server.start()
    await server.stop()
    await asyncio.sleep(0.2)
    assert server.restarts == 0 and not server.running


@pytest.mark.integration
async def test_killing_the_real_llm_server_mid_reply(tmp_path: Path) -> None:
    from tests.test_llama_server import _gguf, require_llama_server

    require_llama_server()
    cfg = fake_config(**{"llm": {"impl": "openai", "base_url": None, "model_path": str(_gguf()), "max_tokens": 300,
                                 "temperature": 0.0, "n_parallel": 2, "log_path": str(tmp_path / "llama.log")},
                         "context.system_prompt": "Count from one to two hundred in words, one number per line."})
    async with running_server(cfg) as server, ws_client(server) as c:
        llm = server_context(server).stages["llm"]
        await c.send_audio(utterance())
        await c.next("response.created", timeout=120)
        os.kill(llm.server._proc.pid, signal.SIGKILL)  # before or while it streams the reply
        err = await c.next("error", timeout=120)
        assert err["error"]["code"] == "reply_failed" and "language model" in err["error"]["message"]
        done = await c.next("response.done", timeout=120)
        assert done["response"]["status"] == "failed"
        await wait_until(lambda: llm.restarts == 1 and llm.available, timeout=180, what="the restart")
        await c.send_audio(utterance())
        done = await c.next("response.done", timeout=180)
        assert done["response"]["status"] == "completed"


async def test_readiness_and_metrics_follow_the_llm_server() -> None:
    import aiohttp

    async with running_server() as server, aiohttp.ClientSession() as http:
        llm = server_context(server).stages["llm"]
        llm.available, llm.restarts = False, 3  # as OpenAIChatClient reports while its server restarts
        async with http.get(server.make_url("/readyz")) as r:
            assert r.status == 503 and (await r.json())["reason"] == "llm_unavailable"
        async with http.get(server.make_url("/metrics")) as r:
            text = await r.text()
        assert "step_llm_restarts_total 3.0" in text and "step_llm_available 0.0" in text
        llm.available = True
        async with http.get(server.make_url("/readyz")) as r:
            assert r.status == 200
