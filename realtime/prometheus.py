"""GET /metrics in the Prometheus text format (prometheus_client), one registry per app.

Counters and histograms are fed as things happen (a session's controller events pass through
`observe`, every `error` sent to a client through `count_error`); gauges and the figures other
objects keep (sessions in progress, scheduler queues, admission, LLM restarts) are read at scrape
time by a collector, so nothing has to remember to update them. Names: docs/operations.md.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from controller import events as ev

if TYPE_CHECKING:
    from realtime.session import ServerContext

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: from tens of milliseconds (a stage's first output) to a long reply's whole synthesis.
BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
# TurnMetrics values (milliseconds) → the stage label of step_turn_stage_seconds.
STAGES = {"asr_ms": "asr", "llm_ttft_ms": "llm_first_token", "tts_first_audio_ms": "tts_first_audio",
          "llm_ms": "llm", "tts_ms": "tts"}


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_started = Counter("step_sessions_started", "Sessions started", ["transport"], registry=r)
        self.turns = Counter("step_turns", "Turns answered (a TurnMetrics each)", ["speculative"], registry=r)
        self.responses = Counter("step_responses", "Responses ended, by status", ["status"], registry=r)
        self.voice_to_voice = Histogram(
            "step_eot_to_first_audio_seconds", "From the confirmed end of the user's turn to the reply's "
            "first audio played (server side; the end-of-turn wait comes before it)", registry=r, buckets=BUCKETS)
        self.end_of_turn_wait = Histogram("step_end_of_turn_wait_seconds", "The silence waited for before the "
                                          "end of turn was confirmed", registry=r, buckets=BUCKETS)
        self.stage = Histogram("step_turn_stage_seconds", "Per-turn stage timings", ["stage"], registry=r,
                               buckets=BUCKETS)
        self.speculations = Counter("step_speculations", "Speculative replies, by what became of them",
                                    ["action"], registry=r)
        self.barge_ins = Counter("step_barge_ins", "Replies interrupted by the user", registry=r)
        self.errors = Counter("step_errors", "error events sent to clients, by code", ["code"], registry=r)

    def watch(self, server: "ServerContext") -> None:
        """Read the server's own figures at each scrape."""
        self.registry.register(_ServerCollector(server))

    def observe(self, event: object) -> None:
        match event:
            case ev.TurnMetrics(speculative=speculative, values=values):
                self.turns.labels(str(speculative).lower()).inc()
                if (v := values.get("eot_to_first_audio_ms")) is not None:
                    self.voice_to_voice.observe(v / 1000)
                if (v := values.get("end_of_turn_delay_ms")) is not None:
                    self.end_of_turn_wait.observe(v / 1000)
                for key, stage in STAGES.items():
                    if (v := values.get(key)) is not None:
                        self.stage.labels(stage).observe(v / 1000)
            case ev.Speculation(action=action):
                self.speculations.labels(action).inc()
            case ev.StateChanged(reason="barge_in"):
                self.barge_ins.inc()
            case ev.ResponseDone(status=status):
                self.responses.labels(status).inc()

    def count_error(self, code: str | None) -> None:
        self.errors.labels(code or "unknown").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ServerCollector:
    def __init__(self, server: "ServerContext") -> None:
        self.server = server

    def collect(self):
        server = self.server
        active = GaugeMetricFamily("step_sessions_active", "Sessions in progress", labels=["transport"])
        by_transport: dict[str, int] = {}
        for session in list(server.sessions):
            by_transport[session.transport] = by_transport.get(session.transport, 0) + 1
        for transport in ("websocket", "webrtc", "telephony", *by_transport):
            by_transport.setdefault(transport, 0)
        for transport, n in sorted(by_transport.items()):
            active.add_metric([transport], n)
        yield active
        yield GaugeMetricFamily("step_sessions_max", "server.max_sessions", value=server.config.server.max_sessions)
        admission = server.admission
        yield GaugeMetricFamily("step_admitting", "1 while new sessions are admitted",
                                value=int(admission.decide().admit))
        yield GaugeMetricFamily("step_draining", "1 once SIGTERM started the drain", value=int(admission.draining))
        yield CounterMetricFamily("step_sessions_refused", "Sessions refused by admission", value=admission.refused)
        llm = server.stages.get("llm")
        yield CounterMetricFamily("step_llm_restarts", "Restarts of the bundled LLM server after it died",
                                  value=getattr(llm, "restarts", 0))
        yield GaugeMetricFamily("step_llm_available", "0 while the bundled LLM server is down",
                                value=int(getattr(llm, "available", True)))
        yield from _scheduler_metrics(server.scheduler.snapshot())


def _scheduler_metrics(lanes: dict):
    queued = GaugeMetricFamily("step_scheduler_queued", "Model work waiting, by lane and kind", labels=["lane", "kind"])
    running = GaugeMetricFamily("step_scheduler_running", "Model work running, by lane", labels=["lane"])
    jobs = CounterMetricFamily("step_scheduler_jobs", "Model work done, by lane", labels=["lane"])
    dropped = CounterMetricFamily("step_scheduler_dropped", "Model work dropped unrun, by lane", labels=["lane"])
    busy = CounterMetricFamily("step_scheduler_busy_seconds", "Worker time spent, by lane", labels=["lane"])
    wedged = CounterMetricFamily("step_scheduler_wedged_workers",
                                 "Worker threads given up in a call that did not return (core/wedge.py)", labels=["lane"])
    wait = GaugeMetricFamily("step_scheduler_wait_seconds", "Recent queue waits (p50, p95, max) by lane and kind",
                             labels=["lane", "kind", "quantile"])
    for name, lane in lanes.items():
        for kind, n in lane["queued"].items():
            queued.add_metric([name, kind], n)
        running.add_metric([name], lane["running"])
        jobs.add_metric([name], lane["jobs"])
        dropped.add_metric([name], lane["dropped"])
        busy.add_metric([name], lane["busy_s"])
        wedged.add_metric([name], lane.get("counters", {}).get("wedged_workers", 0))
        for kind, w in lane["wait_ms"].items():
            for q in ("p50", "p95", "max"):
                wait.add_metric([name, kind, q], w[q] / 1000)
    yield from (queued, running, jobs, dropped, busy, wedged, wait)
