"""GET /metrics: the Prometheus text format, parsed back with prometheus_client's own parser;
GET /metrics.json keeps the JSON view (the bench samples it). Each app has its own registry."""
from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.realtime_util import running_server, server_context, utterance, ws_client


def _samples(text: str) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def _scrape(http: aiohttp.ClientSession, server) -> dict[tuple, float]:
    async with http.get(server.make_url("/metrics")) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        return _samples(await r.text())


async def test_metrics_count_sessions_turns_and_errors() -> None:
    async with running_server() as server, aiohttp.ClientSession() as http:
        before = await _scrape(http, server)
        assert before[("step_sessions_active", (("transport", "websocket"),))] == 0
        assert before[("step_llm_restarts_total", ())] == 0 and before[("step_draining", ())] == 0
        async with ws_client(server) as c:
            await c.ws.send_str("{not json")
            await c.next("error")
            await c.send_audio(utterance())
            await c.next("response.done")
            await c.next("step.turn_metrics")
            m = await _scrape(http, server)
        assert m[("step_sessions_active", (("transport", "websocket"),))] == 1
        assert m[("step_sessions_started_total", (("transport", "websocket"),))] == 1
        assert m[("step_errors_total", (("code", "invalid_json"),))] == 1
        assert sum(v for (name, _), v in m.items() if name == "step_turns_total") == 1
        assert m[("step_responses_total", (("status", "completed"),))] == 1
        assert m[("step_eot_to_first_audio_seconds_count", ())] == 1
        assert m[("step_turn_stage_seconds_count", (("stage", "asr"),))] == 1
        assert m[("step_speculations_total", (("action", "started"),))] >= 1
        async with http.get(server.make_url("/metrics.json")) as r:
            assert (await r.json())["sessions"]["max"] >= 1


async def test_each_app_has_its_own_registry() -> None:
    async with running_server() as a, running_server() as b, aiohttp.ClientSession() as http:
        async with ws_client(a):
            assert (await _scrape(http, a))[("step_sessions_started_total", (("transport", "websocket"),))] == 1
            assert ("step_sessions_started_total", (("transport", "websocket"),)) not in await _scrape(http, b)


async def test_scheduler_lanes_are_exported() -> None:
    async with running_server() as server, aiohttp.ClientSession() as http:
        lane = server_context(server).scheduler.lane("asr", 1)  # the fake stages have none of their own
        async with lane.slot():
            m = await _scrape(http, server)
        assert m[("step_scheduler_running", (("lane", "asr"),))] == 1
        assert m[("step_scheduler_queued", (("kind", "final"), ("lane", "asr")))] == 0
        assert (await _scrape(http, server))[("step_scheduler_jobs_total", (("lane", "asr"),))] == 1
        assert m[("step_scheduler_wedged_workers_total", (("lane", "asr"),))] == 0
        lane.counters["wedged_workers"] = 2  # what core.wedge.WedgeGuard counts
        assert (await _scrape(http, server))[("step_scheduler_wedged_workers_total", (("lane", "asr"),))] == 2
