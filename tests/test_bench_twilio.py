"""The bench's phone caller (Twilio Media Streams) against the real server on the fake stages:
turns are answered and measured on the audio alone, a barge-in clears the line."""
from __future__ import annotations

import aiohttp
import pytest

from bench import caller_twilio, caller_ws, cluster
from bench.corpus import synthetic_conversation
from bench.measure import API_KEY_ENV, analyze
from bench.mic import ScriptOptions
from bench.run import parse_args
from tests.realtime_util import fake_config, running_server


async def test_a_phone_caller_is_answered_and_measured() -> None:
    cfg = fake_config(**{"llm.echo": False, "llm.reply": "One two three four five. Six seven eight nine ten."})
    async with running_server(cfg) as server:
        conv = synthetic_conversation(phrases=((0.6,), (0.5,), (0.5,)), barge=(1,))
        opts = ScriptOptions(quiet_s=0.4, think_s=(0.2, 0.3), lead_in_s=0.3, barge_after_s=0.3)
        timings, heard, events = await caller_twilio.call(str(server.make_url("/")), conv, opts)
    records = analyze(0, timings, heard.chunks, events)
    assert len(records) == 3
    answered = [r for r in records if r.v2v_ms is not None]
    assert len(answered) >= 2 and all(r.v2v_ms > 0 for r in answered)
    assert any(kind == {"type": "twilio.clear"} for _, kind in events)  # the barge-in cleared the line


async def test_bench_callers_send_the_api_key_to_a_server_with_auth_on(monkeypatch) -> None:
    """`bench --url … --api-key K` against a production server: the callers (and the bench's
    /metrics sampling) send `Authorization: Bearer K`; without it the call is refused with 401."""
    key = "sk-bench-0123456789abcdef0123"
    cfg = fake_config(**{"server.auth.enabled": True, "server.auth.api_keys": [key], "llm.echo": False,
                         "llm.reply": "Sure."})
    conv = synthetic_conversation(phrases=((0.6,),))
    opts = ScriptOptions(quiet_s=0.4, think_s=(0.2, 0.3), lead_in_s=0.3)
    async with running_server(cfg) as server:
        url = str(server.make_url("/"))
        monkeypatch.setenv(API_KEY_ENV, "")  # no key (and restored after the test: parse_args sets it)
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await caller_ws.call(url, conv, opts)
        assert refused.value.status == 401
        assert await cluster.sessions_started({"w": url}) == {"w": None}  # /metrics wants the key too
        parse_args(["--url", url, "--api-key", key])  # what the bench's command line does
        for caller in (caller_ws, caller_twilio):
            timings, heard, events = await caller.call(url, conv, opts)
            assert [r.v2v_ms for r in analyze(0, timings, heard.chunks, events)][0] is not None
        assert (await cluster.sessions_started({"w": url}))["w"] == 2
