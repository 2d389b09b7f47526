"""The bench's callers in separate processes measure what the in-process callers measure (the echo
agent's known delay, on the one monotonic clock every process shares); a refused call is counted
as refused, not as a crash, a hang or an unanswered turn; a caller process that dies is reported;
and the sustained run's per-window report and the server's queue metrics are read right.

Timing tolerance as in test_bench_echo.py: exactness is claimed on the median turn only, after
taking out the agent's own reported lateness.
"""
from __future__ import annotations

import asyncio
import json
import statistics
import sys

import pytest
from aiohttp import web

from bench import caller_proc, report, sustained
from bench.callers import CallerPlan, LoopLag, ShareJob, caller_summary, run_in_process, split
from bench.corpus import load_conversations, save_conversations, synthetic_conversation
from bench.echo_agent import AGENTS, make_app
from bench.measure import TurnRecord
from bench.mic import ScriptOptions
from bench.server import scheduler_summary
from bench.stats import knee, summarize

DELAY_MS = 700.0
FRAME_MS = 20.0
TRANSPORT_ALLOWANCE_MS = 250.0
OPTS = dict(quiet_s=0.4, think_s=(0.2, 0.3), lead_in_s=0.3, barge_after_s=0.25, reply_timeout_s=5.0)


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


def _corpus():
    return [synthetic_conversation("a", phrases=((0.5, 0.35, 0.4), (0.6,)), seed=1),
            synthetic_conversation("b", phrases=((0.4,), (0.5, 0.3, 0.3)), seed=2)]


async def _level(url: str, corpus, procs: int, tmp_path, transport: str = "ws", callers: int = 2,
                 sustained_s: float | None = None, hard_stop_s: float = 60.0):
    """One level as bench.run runs it: in this process (procs=0) or in caller processes."""
    plans = [CallerPlan(c, [c % len(corpus)], 0.37 * c) for c in range(callers)]
    job = ShareJob(transport, url, plans, ScriptOptions(**OPTS), sustained=sustained_s is not None)

    def times():
        import time
        t0 = time.monotonic() + 0.1
        until = t0 + (sustained_s or hard_stop_s)
        return t0, until, t0 + hard_stop_s

    lag = LoopLag()
    try:
        if procs == 0:
            job.t0, job.until, job.hard_stop = times()
            job.opts.deadline = job.until
            return await run_in_process(job, corpus, None, lag)
        path = save_conversations(corpus, tmp_path / "corpus.npz")
        jobs = [ShareJob(**{**job.__dict__, "plans": share}) for share in split(plans, procs)]
        return await caller_proc.run_in_processes(jobs, path, tmp_path / "logs", times)
    finally:
        await lag.stop()


def test_conversations_travel_to_the_caller_processes_unchanged(tmp_path):
    corpus = _corpus()
    back = load_conversations(save_conversations(corpus, tmp_path / "c.npz"))
    assert [c.name for c in back] == ["a", "b"]
    for c, d in zip(corpus, back):
        for u, v in zip(c.turns, d.turns):
            assert (u.pcm == v.pcm).all() and u.speech_end_s == v.speech_end_s and u.barge_in == v.barge_in


@pytest.mark.parametrize("procs", [0, 2])
async def test_caller_processes_measure_the_injected_delay_like_in_process(procs, tmp_path):
    app = make_app(DELAY_MS, hangover_ms=550, barge_in_ms=100, reply_s=0.8)
    runner, url = await _serve(app)
    try:
        run = await _level(url, _corpus(), procs, tmp_path)
    finally:
        await runner.cleanup()
    assert run.errors == []
    assert len(run.procs) == max(1, procs) and all(p["error"] is None for p in run.procs)
    assert sorted(c for p in run.procs for c in p["callers"]) == [0, 1]
    assert all(p["caller_loop_lag_max_ms"] is not None and p["cpu_mean_percent"] is not None for p in run.procs)
    assert len(run.records) == 4 and [r.error for r in run.records] == [None] * 4
    replies = {r["response_id"]: r for agent in app[AGENTS] for r in agent.replies}
    offsets = []
    for rec in run.records:
        echo = replies[rec.response_id]
        # the caller's clock (another process, maybe) and the agent's are the same clock
        up = (echo["t_speech_end_received"] - rec.t_speech_end) * 1000
        down = (rec.t_speech_end + rec.v2v_ms / 1000 - echo["t_first_sent"]) * 1000
        assert -FRAME_MS < up < TRANSPORT_ALLOWANCE_MS
        assert -1.0 < down < TRANSPORT_ALLOWANCE_MS
        assert rec.v2v_ms >= DELAY_MS - FRAME_MS
        offsets.append(rec.v2v_ms - DELAY_MS - echo["lateness_s"] * 1000)
    assert abs(statistics.median(offsets)) <= FRAME_MS, offsets
    s = {**summarize(run.records), **caller_summary(run.procs)}
    assert s["caller_procs"] == procs and s["refused"] == 0 and s["errors"] == 0


def _refusing_app(how: str) -> web.Application:
    """A server at capacity: 503 on both endpoints (what realtime/ws.py sends), or (how="event")
    a WebSocket that is accepted and then told `server_busy` in an error event."""
    busy = {"type": "error", "error": {"type": "server_error", "code": "server_busy",
                                       "message": "all 1 sessions are in use; try again later"}}

    async def ws(request):
        if how == "503":
            return web.json_response(busy, status=503, headers={"Retry-After": "5"})
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        await sock.send_str(json.dumps({"type": "session.created", "session": {}}))
        await sock.send_str(json.dumps(busy))
        async for _ in sock:  # keeps it open: the caller must end the call itself
            pass
        return sock

    async def calls(request):
        await request.read()
        return web.json_response(busy, status=503, headers={"Retry-After": "5"})

    app = web.Application()
    app.router.add_get("/v1/realtime", ws)
    app.router.add_post("/v1/realtime/calls", calls)
    return app


@pytest.mark.parametrize("how,procs,transport", [("503", 0, "ws"), ("event", 1, "ws"), ("503", 0, "webrtc")])
async def test_a_refused_call_is_counted_as_refused(how, procs, transport, tmp_path):
    runner, url = await _serve(_refusing_app(how))
    try:
        run = await asyncio.wait_for(_level(url, _corpus(), procs, tmp_path, transport=transport), 60)
    finally:
        await runner.cleanup()
    assert run.errors == []  # not a crash
    assert [c["outcome"] for c in run.calls] == ["refused", "refused"]
    assert all(("503" if how == "503" else "server_busy") in c["reason"] for c in run.calls)
    if transport == "webrtc":  # the reason in the 503's body is kept
        assert all("sessions are in use" in c["reason"] for c in run.calls)
    assert len(run.records) == 4 and all(r.refused and r.v2v_ms is None for r in run.records)
    s = summarize(run.records)
    assert s["refused"] == 4 and s["errors"] == 0 and s["turns"] == 4


def test_the_knee_keeps_refusals_apart_from_unanswered_turns():
    ok = {"v2v_p95_ms": 900.0, "max_gap_ms": 0.0, "errors": 0, "refused": 0}
    refusing = {**ok, "refused": 6, "refused_calls": 3}
    unanswered = {**ok, "errors": 1}
    assert knee({1: ok, 2: refusing}, 1500) == 2  # admission is not a failure to answer
    assert knee({1: ok, 2: refusing}, 1500, refusals_fail=True) == 1
    assert knee({1: ok, 2: unanswered}, 1500) == 1
    recs = [TurnRecord(0, "c", 0, "en", "v", False, v2v_ms=800.0),
            TurnRecord(0, "c", 1, "en", "v", False, error="no reply"),
            TurnRecord(1, "c", 0, "en", "v", False, refused=True, error="refused: HTTP 503")]
    s = summarize(recs)
    assert (s["turns"], s["errors"], s["refused"], s["replied"]) == (3, 1, 1, 1)


async def test_a_caller_process_that_dies_is_reported_not_waited_on(tmp_path, monkeypatch):
    corpus = _corpus()
    # one dies before it is ready; the other sends one record, then dies during the level
    script = ("import json, sys\n"
              "job = json.loads(sys.stdin.readline())\n"
              "if job['job']['plans'][0]['caller'] == 0:\n"
              "    sys.stderr.write('boom before ready'); sys.exit(3)\n"
              "print(json.dumps({'ready': 1}), flush=True)\n"
              "sys.stdin.readline()\n"
              "rec = {'caller': 1, 'conversation': 'b', 'turn': 0, 'lang': 'xx', 'voice': 'tone', 'barge_in': False,"
              " 'v2v_ms': 750.0}\n"
              "print(json.dumps({'records': [rec]}), flush=True)\n"
              "sys.stderr.write('boom during the level'); sys.exit(5)\n")
    monkeypatch.setattr(caller_proc, "WORKER_CMD", [sys.executable, "-c", script])
    run = await asyncio.wait_for(_level("http://127.0.0.1:9", corpus, 2, tmp_path), 60)
    by_proc = {p["proc"]: p for p in run.procs}
    assert "before it was ready" in by_proc[0]["error"] and by_proc[0]["exit_code"] == 3
    assert "died during the level" in by_proc[1]["error"] and by_proc[1]["exit_code"] == 5
    assert len(run.errors) == 2
    assert any("boom before ready" in e for e in run.errors) and any("boom during the level" in e for e in run.errors)
    assert [r.v2v_ms for r in run.records] == [750.0]  # what it sent before dying is kept
    assert caller_summary(run.procs)["caller_proc_failures"] == 2


async def test_sustained_callers_call_again_until_the_end(tmp_path):
    app = make_app(DELAY_MS, hangover_ms=550, barge_in_ms=100, reply_s=0.8)
    runner, url = await _serve(app)
    corpus = [synthetic_conversation("one", phrases=((0.5,),), seed=3)]
    try:
        run = await asyncio.wait_for(_level(url, corpus, 0, tmp_path, callers=1, sustained_s=7.0, hard_stop_s=40), 60)
    finally:
        await runner.cleanup()
    assert run.errors == []
    assert len(run.calls) >= 2 and all(c["outcome"] == "ok" for c in run.calls)  # one call each ≈ 3 s
    t_end = max(c["t_end"] for c in run.calls)
    assert all(c["t_start"] < min(c2["t_start"] for c2 in run.calls) + 7.0 for c in run.calls)  # none after the end
    assert t_end < min(c["t_start"] for c in run.calls) + 40
    assert [r.error for r in run.records if r.t_speech_end is not None] == [None] * len(run.records)


# -- sustained report on synthetic records -------------------------------------------------------

def _turn(t, v2v, gap=0.0, error=None, refused=False):
    return {"t_speech_end": t, "v2v_ms": v2v, "max_gap_ms": gap, "gaps_over_100ms": int(gap > 100),
            "error": error, "refused": refused, "caller_stalled": False}


def test_sustained_windows_latency_refusals_sessions_cpu_and_memory():
    t0 = 1000.0
    # minute 0: 800 ms turns; minute 1: 1000 ms and one unanswered; minute 2 (partial, 30 s): 1200 ms
    turns = ([_turn(t0 + 5 + i * 10, 800.0) for i in range(5)]
             + [_turn(t0 + 65 + i * 10, 1000.0, gap=120.0 if i == 0 else 0.0) for i in range(5)]
             + [_turn(t0 + 70, None, error="no reply")]
             + [_turn(t0 + 125, 1200.0), _turn(t0 + 151, 1200.0)]  # 151: ended in the grace, counted last
             + [_turn(None, None, error="refused: HTTP 503", refused=True)])
    calls = [{"t_start": t0, "t_end": t0 + 150, "outcome": "ok"},
             {"t_start": t0 + 60, "t_end": t0 + 120, "outcome": "ok"},
             {"t_start": t0 + 61, "t_end": t0 + 61.1, "outcome": "refused"}]
    server = [{"t": t0 + i * 0.5, "cpu_percent": 20.0 if i < 120 else 30.0, "rss_mib": 500.0 + i * 0.1}
              for i in range(300)]
    metrics = [{"t": t0 + 70, "scheduler": {"lanes": {"asr": {"queued": {"final": 1, "speculative": 2}}}}}]
    rep = sustained.report(turns, calls, server, metrics, t0, t0 + 150, window_s=60)
    w = rep["windows"]
    assert [(x["from_s"], x["to_s"]) for x in w] == [(0, 60), (60, 120), (120, 150)]
    assert [x["turns"] for x in w] == [5, 6, 2] and [x["answered"] for x in w] == [5, 5, 2]
    assert [x["unanswered"] for x in w] == [0, 1, 0] and [x["refused_calls"] for x in w] == [0, 1, 0]
    assert [x["v2v_p50_ms"] for x in w] == [800.0, 1000.0, 1200.0]
    assert w[1]["max_gap_ms"] == 120.0 and w[1]["gaps_over_100ms"] == 1
    assert [x["active_sessions_mean"] for x in w] == [1.0, 2.0, 1.0]
    # CPU 20 % with one call in progress, then 30 % with 2 calls, then 30 % with one
    assert [x["cpu_per_session_percent"] for x in w] == [20.0, 15.0, 30.0]
    assert w[1]["queued_max"] == {"asr": 3} and w[0]["queued_max"] == {}
    o = rep["overall"]
    assert (o["turns"], o["answered"], o["unanswered"], o["refused_turns"], o["refused_calls"]) == (13, 12, 1, 1, 1)
    assert o["v2v_p50_first_last_window_ms"] == [800.0, 1200.0]
    assert o["v2v_slope_ms_per_min"] == pytest.approx(200, rel=0.25)  # it drifts: 200 ms a minute
    assert o["server_rss_start_mib"] == 500.0 and o["server_rss_growth_mib"] == pytest.approx(29.9)
    assert o["server_rss_slope_mib_per_min"] == pytest.approx(12.0, rel=0.01)  # 0.1 MiB per 0.5 s
    assert o["gaps_over_100ms"] == 1
    # 13 turns said over 2.5 minutes with 1.4 calls in progress; CPU 26 % on average over 150 s
    assert o["turns_per_call_minute"] == pytest.approx(13 / 1.4 / 2.5, abs=0.01)
    assert o["server_cpu_s_per_turn"] == pytest.approx(0.26 * 150 / 13, abs=0.01)


def test_sustained_watches_each_process_tasks_and_fds_after_warm_up():
    t0 = 0.0
    # the server grows 10 % from the second window on, its LLM child stays flat; tasks and fds flat
    server = [{"t": t0 + m * 60 + 30, "cpu_percent": 10.0, "rss_mib": 0.0,
               "rss_server_mib": [900.0, 400.0, 420.0, 440.0][m], "rss_children_mib": 300.0} for m in range(4)]
    metrics = [{"t": t0 + m * 60 + 30, "process": {"asyncio_tasks": [50, 30, 31, 30][m], "open_fds": 40}}
               for m in range(4)]
    rep = sustained.report([], [], server, metrics, t0, t0 + 240, window_s=60)
    assert [w["rss_server_max_mib"] for w in rep["windows"]] == [900.0, 400.0, 420.0, 440.0]
    grown = rep["overall"]["after_warm_up"]
    assert grown["rss_server_max_mib"] == {"first": 400.0, "last": 440.0, "growth_percent": 10.0}
    assert grown["rss_children_max_mib"]["growth_percent"] == 0.0
    assert grown["asyncio_tasks_max"] == {"first": 30.0, "last": 30.0, "growth_percent": 0.0}
    assert grown["rss_server_median_mib"]["growth_percent"] == 10.0  # one sample per window: median = it
    assert grown["open_fds_max"]["growth_percent"] == 0.0


def test_sustained_report_in_the_summary(tmp_path):
    t0 = 0.0
    rep = sustained.report([_turn(10.0, 900.0)], [{"t_start": 0.0, "t_end": 20.0, "outcome": "ok"}],
                           [{"t": 5.0, "cpu_percent": 30.0, "rss_mib": 100.0}], [], t0, 60.0)
    run = {"variant": "fake", "concurrency": 1, "seconds": 60.0, "server": {}, "call_errors": [], "turns": [],
           "calls": [], "callers": [], "summary": summarize([])}
    result = {"transport": "ws", "command": "python -m bench --sustained 1", "threshold_ms": 1500.0,
              "max_gap_ms": 100.0, "knee": {}, "variants": [{"name": "fake"}], "notes": [], "runs": [run], "ab": [],
              "sustained": {"callers": 1, "duration_s": 60.0, "variant": "fake", **rep}}
    md = report.markdown(result)
    assert "## Sustained: 1 callers" in md and "| 0–60 s | 1 | 1 | 0 | 0 | 900 |" in md
    assert "CPU per call" in md and "Knee" not in md


# -- the server's model queues (GET /metrics.json "scheduler") -----------------------------------------

def _metrics(t, asr_final, asr_spec, jobs, busy, wait_p95, admitting=True, counters=None):
    return {"t": t, "tag": "x", "active_sessions": 2, "scheduler": {
        "lanes": {"asr": {"workers": 1, "running": 1, "queued": {"final": asr_final, "speculative": asr_spec, "warmup": 0},
                          "wait_ms": {"final": {"p50": 12.0, "p95": wait_p95, "max": 120.0, "n": jobs}},
                          "busy_s": busy, "jobs": jobs, "dropped": 1, "batches": jobs // 2, "batch_size_mean": 2.0,
                          **({"counters": counters} if counters else {})},
                  "llm": {"workers": 1, "running": 0, "queued": {"final": 0}, "wait_ms": {}, "busy_s": 1.0,
                          "jobs": 3, "dropped": 0, "batches": 3, "batch_size_mean": 1.0}},
        "load": {"admitting": admitting, "reason": None if admitting else "CPU full", "capacity_sessions": 9.5 - t,
                 "admitted_sessions": 2, "active_sessions": 2, "session_cpu": 0.2, "measured_session_cpu": 0.25,
                 "cpu_util": 0.5, "final_wait_p95_ms": 80.0 + t, "refused": int(t)}}}


def test_scheduler_metrics_per_level_and_their_absence():
    samples = [_metrics(0.0, 0, 1, 10, 1.0, 50.0, counters={"loop_retries": 2}),
               _metrics(1.0, 2, 3, 14, 1.5, 80.0, counters={"loop_retries": 2, "solo_encodes": 1}),
               _metrics(2.0, 1, 0, 20, 2.0, 90.0, admitting=False, counters={"loop_retries": 3, "solo_encodes": 4})]
    s = scheduler_summary(samples)
    asr = s["lanes"]["asr"]
    assert asr["queued"]["final"] == {"max": 2.0, "mean": 1.0} and asr["queued"]["speculative"]["max"] == 3.0
    assert list(asr["queued"]) == ["final", "speculative", "warmup"]
    assert asr["queued_total_max"] == 5.0
    assert asr["wait_ms"]["final"]["p95"] == 90.0  # as the server reported it at the end of the level
    assert asr["jobs"] == 10 and asr["busy_s"] == 1.0 and asr["busy_percent"] == 50.0  # 1 s busy in 2 s
    # the stage's counters during the level; one first seen mid-level started at 0
    assert asr["counters"] == {"loop_retries": 1, "solo_encodes": 4} and s["lanes"]["llm"]["counters"] == {}
    load = s["load"]
    assert load["admitting_share"] == pytest.approx(0.67) and load["capacity_sessions_last"] == 7.5
    assert load["not_admitting_reasons"] == {"CPU full": 1} and load["refused"] == 2
    assert load["final_wait_p95_ms_max"] == 82.0 and load["measured_session_cpu_last"] == 0.25
    # a server that called it "estimated_sessions" (the first sketch of the key) reads the same
    old = scheduler_summary([{**x, "scheduler": {**x["scheduler"], "load": {"estimated_sessions": 4.0}}}
                             for x in samples])
    assert old["load"]["capacity_sessions_last"] == 4.0
    assert scheduler_summary([{"t": 0.0, "tag": "x", "scheduler": None, "active_sessions": 1}]) == {}
    run = {"variant": "v", "concurrency": 4, "seconds": 2.0, "server": {}, "call_errors": [], "turns": [],
           "summary": summarize([]), "scheduler": s}
    result = {"transport": "ws", "command": "python -m bench", "threshold_ms": 1500.0, "max_gap_ms": 100.0,
              "knee": {"v": None}, "variants": [{"name": "v"}], "notes": [], "runs": [run], "ab": []}
    md = report.markdown(result)
    assert ("| v | 4 | asr | 1 | 50 | 10 | 0 | 2 | final 2 / 1 · speculative 3 / 1.33 · warmup 0 / 0 | final 12 / 90 "
            "| loop_retries 1 · solo_encodes 4 |") in md
    assert "| v | 4 | 0.67 | 7.5 / 7.5 | 2 | 0.2 / 0.25 | 0.5 / 0.5 | 82 | 2 | CPU full (1×) |" in md
    del run["scheduler"]
    assert "model queues" not in report.markdown(result)
