"""The capacity model's arithmetic (bench/capacity_model.py) on cases small enough to check by hand,
and its simulation against the formula."""
from __future__ import annotations

import math

import pytest

from bench import capacity_model as cm


def test_erlang_c_matches_the_closed_forms() -> None:
    assert cm.erlang_c(1, 0.6) == pytest.approx(0.6)  # M/M/1: P(wait) = ρ
    assert cm.erlang_c(2, 1.0) == pytest.approx(1 / 3)  # M/M/2, ρ = ½: 2ρ²/(1+ρ)
    assert cm.erlang_c(3, 3.0) == 1.0 and cm.erlang_c(3, 0.0) == 0.0  # unstable; idle
    # M/M/1 mean wait ρ/(μ−λ): λ = 0.5/s, service 1 s → 1 s
    assert cm.mean_wait(1, 0.5, 1.0) == pytest.approx(1.0)
    # P(wait > t) = C e^{−(cμ−λ)t}: M/M/1, λ 0.5, μ 1, t 2 → 0.5 e^{−1}
    assert cm.wait_exceeds(1, 0.5, 1.0, 2.0) == pytest.approx(0.5 * math.exp(-1))


def test_slots_needed_is_the_fewest_that_meet_the_budget() -> None:
    c = cm.slots_needed(arrival_rate=2.0, service_s=1.0, wait_budget_s=0.5)
    assert cm.wait_exceeds(c, 2.0, 1.0, 0.5) <= 0.05 < cm.wait_exceeds(c - 1, 2.0, 1.0, 0.5)
    assert cm.slots_needed(0.0, 1.0, 0.1) == 0
    assert cm.slots_needed(10.0, 1.0, 0.1) > cm.slots_needed(5.0, 1.0, 0.1)  # more traffic, more slots


def test_the_simulation_agrees_with_erlang_c() -> None:
    waits = cm.simulate_wait(c=2, arrival_rate=1.0, service_s=1.0, customers=200_000)
    assert sum(w > 0 for w in waits) / len(waits) == pytest.approx(1 / 3, abs=0.01)
    assert sum(waits) / len(waits) == pytest.approx(cm.mean_wait(2, 1.0, 1.0), rel=0.05)
    fixed = cm.simulate_wait(c=2, arrival_rate=1.0, service_s=1.0, customers=200_000, service="deterministic")
    assert sum(fixed) / len(fixed) < sum(waits) / len(waits)  # M/D/c waits less: the formula is conservative


def test_size_adds_up() -> None:
    stage = cm.Stage("llm", service_s=1.0, slots_per_replica=4, gpus_per_replica=2, wait_budget_s=0.5, source="test")
    profile = cm.Profile(turns_per_min=6.0, media_cores_per_call=0.5, cores_per_box=4, target_utilization=0.5,
                         stages=(stage,))
    r = cm.size(profile, 20)  # 2 turns/s; media 10 cores over boxes of 4 × 50 % = 2 → 5 boxes
    assert r["media_cores"] == 10.0 and r["media_boxes"] == 5
    llm = r["stages"]["llm"]
    slots = cm.slots_needed(2.0, 1.0, 0.5)
    assert llm["slots"] == slots and llm["replicas"] == math.ceil(slots / 4) and llm["gpus"] == 2 * llm["replicas"]
    assert llm["utilization"] == pytest.approx(2.0 / (4 * llm["replicas"]), abs=1e-3)
    assert r["gpus"] == llm["gpus"]
    assert cm.size(profile, 0)["media_boxes"] == 0 and cm.size(profile, 0)["gpus"] == 0


def test_the_media_cost_is_the_measured_total_less_the_models() -> None:
    models = sum(cm.EMBEDDED_MODEL_CORE_S_PER_TURN.values()) * 4 / 60
    assert cm.webrtc_media_cores(4) == pytest.approx(cm.EMBEDDED_CORES_PER_CALL - models)
    assert 0 < cm.webrtc_media_cores(4) < cm.EMBEDDED_CORES_PER_CALL
    assert cm.embedded_boxes(100) == math.ceil(100 * 0.34 / 1.8)
    phone, ws = (cm.step_audio_profile(transport=t).media_cores_per_call for t in ("telephony", "websocket"))
    assert phone - ws == pytest.approx(cm.AEC_CORES_PER_CALL, abs=1e-4)  # a phone line adds the echo canceller


def test_the_cli_prints_a_table_for_each_size(capsys: pytest.CaptureFixture) -> None:
    assert cm.main(["--calls", "10,100"]) == 0
    out = capsys.readouterr().out
    assert "| 10 |" in out and "| 100 |" in out and "ESTIMATE" in out
