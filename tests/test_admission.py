"""Admission by capacity (core/load.py, realtime/admission.py): the load estimate, refusals on every
endpoint before any media, /readyz for a load balancer, no over-admission when callers race in,
and the calls in progress unaffected by the ones refused."""
from __future__ import annotations

import asyncio
import os
import time
from contextlib import AsyncExitStack

import aiohttp
import pytest

from core.load import AdmissionConfig, LoadMonitor
from core.scheduler import Kind, Scheduler, Ticket
from tests.realtime_util import fake_config, running_server, server_context, utterance, wait_until, ws_client
from tests.telephony_util import ROUTE
from tests.webrtc_util import Caller, SyntheticMic, mic_audio

CORES = len(os.sched_getaffinity(0))


# -- the estimate ----------------------------------------------------------------------------------

def test_capacity_from_the_prior_until_enough_is_seen_then_from_the_measured_cost():
    monitor = LoadMonitor(Scheduler(), AdmissionConfig(session_cpu=0.25, target_utilization=0.9, learn_after_s=60),
                          cores=2)
    assert monitor.capacity == 7  # 0.9 * 2 / 0.25 = 7.2
    cpu = 0.0
    for t in range(0, 31):  # 30 s, 4 sessions using 0.8 cores together: 0.2 cores each
        monitor.observe(float(t), cpu, active=4)
        cpu += 0.8
    assert monitor.measured_session_cpu == pytest.approx(0.2)
    assert monitor.session_seconds == pytest.approx(120) and monitor.capacity == 9  # 1.8 / 0.2
    assert monitor.cpu_util == pytest.approx(0.4, abs=0.25)  # smoothed from 0 toward 0.4


def test_the_idle_baseline_is_not_charged_to_sessions():
    monitor = LoadMonitor(Scheduler(), AdmissionConfig(learn_after_s=10), cores=2, smoothing_s=1)
    cpu, t = 0.0, 0.0
    for _ in range(30):  # idle: the model servers alone use 0.2 cores
        monitor.observe(t, cpu, active=0)
        cpu, t = cpu + 0.2, t + 1
    for _ in range(30):  # 2 sessions: 0.2 + 2 * 0.3 cores
        monitor.observe(t, cpu, active=2)
        cpu, t = cpu + 0.8, t + 1
    assert monitor.idle_cpu == pytest.approx(0.2, abs=0.01)
    assert monitor.measured_session_cpu == pytest.approx(0.3, abs=0.01)
    assert monitor.capacity == 5  # (0.9 * 2 - 0.2) / 0.3 = 5.3


def test_without_learning_the_prior_stands():
    monitor = LoadMonitor(Scheduler(), AdmissionConfig(session_cpu=0.5, learn=False, learn_after_s=1), cores=2)
    for t in range(10):
        monitor.observe(float(t), 0.01 * t, active=2)
    assert monitor.session_cpu == 0.5 and monitor.capacity == 3


def test_a_busy_thread_lane_limits_capacity_before_the_cpu_does():
    """Whisper's one worker 40 % busy with 4 sessions: at 60 % it fits 6, though the CPU fits 90."""
    sched = Scheduler()
    asr, llm = sched.lane("asr", 1), sched.lane("llm", 8, serial=False)
    monitor = LoadMonitor(sched, AdmissionConfig(session_cpu=0.02, learn_after_s=100), cores=2)
    for t in range(60):
        monitor.observe(float(t), 0.08 * t, active=4)
        asr.busy_s += 0.4
        llm.busy_s += 8.0  # slots held on a batching server: not a busy resource
    assert monitor.capacity == 6 and set(monitor.lane_per_session) == {"asr"}
    refused = monitor.decide(admitted=6)
    assert not refused.admit and "asr lane" in refused.reason


def test_cpu_other_processes_use_is_left_to_them():
    """A shared box (here: a load generator using 0.5 cores): the sessions get the rest."""
    monitor = LoadMonitor(Scheduler(), AdmissionConfig(session_cpu=0.25, learn=False), cores=2, smoothing_s=1)
    cpu = box = 0.0
    for t in range(30):
        monitor.observe(float(t), cpu, active=0, box_busy_seconds=box)
        cpu, box = cpu + 0.1, box + 0.1 + 0.5  # the server idles at 0.1 cores; others use 0.5
    assert monitor.idle_cpu == pytest.approx(0.1, abs=0.01) and monitor.other_cpu == pytest.approx(0.5, abs=0.01)
    assert monitor.capacity == 4  # (0.9 * 2 - 0.1 - 0.5) / 0.25 = 4.8, where alone it would be 6
    refused = monitor.decide(admitted=4)
    assert not refused.admit and "0.50 used by other processes" in refused.reason
    for t in range(30, 60):  # the other process ends: the room comes back
        monitor.observe(float(t), cpu, active=0, box_busy_seconds=box)
        cpu, box = cpu + 0.1, box + 0.1
    assert monitor.other_cpu < 0.01 and monitor.capacity == 6


def test_replies_over_budget_close_the_door_until_they_are_in_time_again():
    monitor = LoadMonitor(Scheduler(), AdmissionConfig(session_cpu=0.01, max_reply_delay_ms=1000, reply_window_s=30),
                          cores=2)
    now = time.monotonic()
    for t, ms in enumerate([300, 400, 2500, 2600, 2700]):  # the last three far over budget
        monitor.note_reply(ms, now=now - 5 + t)
    assert monitor.reply_delay_p90_ms() == 2700
    refused = monitor.decide(admitted=3)
    assert not refused.admit and "replies start 2700 ms after the end of turn" in refused.reason
    assert monitor.decide(admitted=0).admit  # an empty server is never closed by old replies
    for t in range(4):  # later replies come in time; the late ones leave the window
        monitor.note_reply(250, now=now + 31 + t)
    assert monitor.reply_delay_p90_ms(now=now + 35) == 250


def test_too_few_recent_replies_say_nothing():
    monitor = LoadMonitor(Scheduler(), AdmissionConfig(session_cpu=0.01), cores=2)
    monitor.note_reply(5000)
    assert monitor.reply_delay_p90_ms() is None and monitor.decide(admitted=3).admit


async def test_a_finished_turn_kept_waiting_closes_the_door_until_it_is_served():
    sched = Scheduler()
    lane = sched.lane("asr", 1)
    monitor = LoadMonitor(sched, AdmissionConfig(session_cpu=0.01, max_final_wait_ms=100), cores=2)
    assert monitor.decide(admitted=3).admit
    busy, release = asyncio.Event(), asyncio.Event()

    async def hold():
        async with lane.slot(Ticket("a", Kind.FINAL)):
            busy.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await busy.wait()
    waiting = asyncio.create_task(hold())  # a finished turn queued behind it
    speculative = lane.enqueue(None, Ticket("b", Kind.SPECULATIVE))
    await asyncio.sleep(0)
    next(j for j in lane._queue if j.kind() is Kind.FINAL).enqueued -= 0.5  # it has waited 500 ms
    speculative.enqueued -= 5  # waiting speculations do not count
    refused = monitor.decide(admitted=3)
    assert not refused.admit and "waited 500 ms" in refused.reason and refused.retry_after_s == 5
    assert monitor.decide(admitted=0).admit  # an idle server always takes one
    release.set()
    await asyncio.gather(holder, waiting)
    speculative.release(speculative.tickets[0])
    assert sched.final_backlog_ms() == 0 and monitor.decide(admitted=3).admit  # served: open again


# -- the server ------------------------------------------------------------------------------------

def _config(capacity: int):
    """A fake-stage server whose capacity estimate is exactly `capacity` sessions on this machine
    (other processes' CPU, which a shared test machine varies, is not counted here)."""
    return fake_config(**{"server.admission": {"session_cpu": 0.9 * CORES / (capacity + 0.5), "learn": False,
                                               "count_other_processes": False}})


async def _refused(http: aiohttp.ClientSession, server) -> None:
    """Every endpoint says 503 with Retry-After before any media, and /readyz agrees."""
    async with http.get(server.make_url("/v1/realtime")) as r:  # the upgrade is refused
        assert r.status == 503 and r.headers["Retry-After"] == "5"
        body = await r.json()
        assert body["type"] == "error" and body["error"]["code"] == "server_busy"
        assert "capacity" in body["error"]["message"]
    caller = Caller(SyntheticMic(mic_audio()))
    try:
        async with http.post(server.make_url("/v1/realtime/calls"), data=await caller.offer(),
                             headers={"Content-Type": "application/sdp"}) as r:
            assert r.status == 503 and r.headers["Retry-After"] == "5"
    finally:
        await caller.close()
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await http.ws_connect(server.make_url(ROUTE))
    assert exc.value.status == 503
    async with http.get(server.make_url("/readyz")) as r:
        assert r.status == 503 and "capacity" in (await r.json())["reason"]


async def test_the_ninth_caller_is_refused_and_the_eight_go_on():
    async with running_server(_config(8)) as server, AsyncExitStack() as stack, aiohttp.ClientSession() as http:
        async with http.get(server.make_url("/readyz")) as r:
            assert r.status == 200
        clients = [await stack.enter_async_context(ws_client(server)) for _ in range(8)]
        await _refused(http, server)
        ctx = server_context(server)
        assert len(ctx.sessions) == 8 and ctx.admission.admitted == 8 and ctx.admission.refused == 3
        async with http.get(server.make_url("/metrics.json")) as r:
            load = (await r.json())["scheduler"]["load"]
            assert load["admitting"] is False and load["capacity_sessions"] == 8 and load["refused"] == 3
        # The calls in progress are served as before.
        for client in clients[:2]:
            await client.send_audio(utterance())
        for client in clients[:2]:
            done = await client.next("response.done")
            assert done["response"]["status"] == "completed"
        # One hangs up: the door opens again.
        await clients[0].close()
        await wait_until(lambda: ctx.admission.admitted == 7, what="the freed place")
        async with http.get(server.make_url("/readyz")) as r:
            assert r.status == 200
        async with ws_client(server):
            assert ctx.admission.admitted == 8


async def test_callers_racing_in_never_exceed_capacity():
    async with running_server(_config(3)) as server, aiohttp.ClientSession() as http:
        async def connect():
            try:
                return await http.ws_connect(server.make_url("/v1/realtime"))
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status

        results = await asyncio.gather(*(connect() for _ in range(10)))
        sockets = [r for r in results if not isinstance(r, int)]
        assert len(sockets) == 3 and sorted(r for r in results if isinstance(r, int)) == [503] * 7
        assert server_context(server).admission.admitted == 3
        for ws in sockets:
            await ws.close()
        await wait_until(lambda: server_context(server).admission.admitted == 0, what="all places freed")


async def test_a_webrtc_call_that_fails_set_up_gives_its_place_back():
    async with running_server(_config(1)) as server, aiohttp.ClientSession() as http:
        async with http.post(server.make_url("/v1/realtime/calls"), data="v=0\r\nnot an offer\r\n",
                             headers={"Content-Type": "application/sdp"}) as r:
            assert r.status == 400
        assert server_context(server).admission.admitted == 0
        caller = Caller(SyntheticMic(mic_audio()))
        try:
            await caller.connect(http, str(server.make_url("/v1/realtime/calls")))
            assert server_context(server).admission.admitted == 1
        finally:
            await caller.close()
