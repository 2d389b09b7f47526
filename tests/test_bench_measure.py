"""The bench's arithmetic: voice detection, playout, per-turn figures, summaries, knee, report,
corpus. No server, no wall-clock assertions (the mic runs on a fake clock)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from bench import report
from bench.corpus import SR, Utterance, load_corpus, spec_hash, synthetic_conversation
from bench.measure import Playout, TurnTiming, analyze, voiced_bounds
from bench.stats import knee, summarize
from bench.mic import Mic


def tone(seconds: float, sr: int = SR, amp: int = 6000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * 300 * t)).astype(np.int16)


def silence(seconds: float, sr: int = SR) -> np.ndarray:
    return np.zeros(int(seconds * sr), np.int16)


def test_voiced_bounds_are_exact_to_the_window():
    pcm = np.concatenate([silence(0.1), tone(0.15), silence(0.2)])
    start, end = voiced_bounds(pcm, SR)
    assert start == pytest.approx(0.1) and end == pytest.approx(0.25)
    assert voiced_bounds(silence(0.3), SR) == (None, None)
    # quiet noise (−70 dBFS) is not voice; stereo is averaged
    noise = (np.random.default_rng(0).standard_normal(4800) * 10).astype(np.int16)
    assert voiced_bounds(noise, SR) == (None, None)
    stereo = np.stack([pcm, pcm], axis=1)
    assert voiced_bounds(stereo, SR)[1] == pytest.approx(0.25)


def test_playout_queues_early_audio_and_drops_silence_while_behind():
    p = Playout()
    a = p.add(tone(0.1), SR, t_arrival=10.0)
    b = p.add(tone(0.1), SR, t_arrival=10.02)  # arrived early: plays after a
    assert a.t_heard == 10.0 and b.t_heard == pytest.approx(10.1) and b.underrun == 0
    c = p.add(tone(0.1), SR, t_arrival=10.35)  # late: a 150 ms underrun
    assert c.t_heard == 10.35 and c.underrun == pytest.approx(0.15)
    p.add(silence(0.02), SR, t_arrival=10.36)  # silence while 90 ms behind: dropped
    d = p.add(tone(0.02), SR, t_arrival=10.37)
    assert d.t_heard == pytest.approx(10.45)
    assert p.first_voice_after(10.15) == pytest.approx(10.15)  # b is still playing then
    assert p.first_voice_after(10.21) == pytest.approx(10.35)


def _turn(i, start, end, barge=False):
    return TurnTiming(i, "c", "en", "v", barge, start, end)


def _reply(p: Playout, t0: float, seconds: float, rid: str, lead_silence: float = 0.0, hole_at: float | None = None,
           hole: float = 0.0):
    """A reply in 20 ms chunks arriving in real time from t0; optional leading silence and a hole."""
    t, sent = t0, 0.0
    while sent < seconds:
        pcm = silence(0.02) if sent < lead_silence else tone(0.02)
        if hole_at is not None and abs(sent - hole_at) < 1e-9:
            t += hole
        p.add(pcm, SR, t, rid)
        t += 0.02
        sent = round(sent + 0.02, 6)
    return t


def test_analyze_latency_gaps_barge_in_and_server_events():
    p = Playout()
    turns = [_turn(0, 1.0, 3.0), _turn(1, 5.0, 6.5, barge=True), _turn(2, 9.0, 10.0)]
    _reply(p, 3.78, 0.6, "r1", lead_silence=0.02)  # voice from 3.80: 800 ms
    _reply(p, 4.7, 1.1, "r2")  # still playing when turn 1 starts at 5.0; last chunk arrives at 5.78
    _reply(p, 7.2, 0.6, "r3", hole_at=0.2, hole=0.15)  # a 150 ms gap
    events = [
        (3.7, {"type": "response.created", "response": {"id": "r1"}}),
        (2.5, {"type": "step.speculation", "action": "started"}),
        (3.6, {"type": "step.speculation", "action": "committed"}),
        (4.9, {"type": "step.turn_metrics", "response_id": "r1", "speculative": True,
               "values": {"asr_ms": 12.0, "llm_ttft_ms": 100.0}}),
        (5.8, {"type": "response.done", "response": {"id": "r2", "status": "cancelled"}}),
    ]
    recs = analyze(3, turns, p.chunks, events)
    r0, r1, r2 = recs
    assert r0.v2v_ms == pytest.approx(800, abs=0.5) and r0.error is None
    assert r0.response_id == "r1" and r0.speculative is True and r0.server["llm_ttft_ms"] == 100.0
    assert r0.speculation == ["started", "committed"]
    assert r0.reply_ms == pytest.approx(580, abs=1)
    assert r1.barge_stop_ms == pytest.approx(800, abs=0.5) and r1.interrupted is True  # last voice heard at 5.8
    assert r1.v2v_ms == pytest.approx(700, abs=0.5)  # the next reply, r3 at 7.2
    assert r1.max_gap_ms == pytest.approx(150, abs=0.5) and r1.gaps_over_100ms == 1
    assert r2.v2v_ms is None and r2.error == "no reply"


def test_analyze_flags_a_reply_into_the_users_pause():
    p = Playout()
    _reply(p, 1.7, 0.5, "r")  # the user paused at 1.5 and went on until 3.0
    (rec,) = analyze(0, [_turn(0, 0.0, 3.0)], p.chunks, [])
    assert rec.premature and rec.v2v_ms is None and rec.error == "replied before the user finished"


def test_a_barge_in_into_a_reply_that_had_ended_on_its_own_is_not_a_stop_time():
    p = Playout()
    _reply(p, 0.5, 0.6, "r")
    events = [(0.9, {"type": "response.done", "response": {"id": "r", "status": "completed"}})]
    (rec,) = analyze(0, [_turn(0, 0.9, 2.0, barge=True)], p.chunks, events)
    assert rec.interrupted is False and rec.barge_stop_ms is None


def _summary(p95, gap=0.0, errors=0):
    return {"v2v_p95_ms": p95, "max_gap_ms": gap, "errors": errors}


def test_summary_percentiles_and_knee():
    p = Playout()
    turns = [_turn(i, i * 10.0, i * 10.0 + 2) for i in range(5)]
    for i, ms in enumerate([500, 600, 700, 800, 1900]):
        _reply(p, i * 10.0 + 2 + ms / 1000, 0.2, f"r{i}")
    s = summarize(analyze(0, turns, p.chunks, []))
    assert s["turns"] == 5 and s["replied"] == 5 and s["errors"] == 0
    assert s["v2v_p50_ms"] == pytest.approx(700, abs=1)
    assert s["v2v_p95_ms"] == pytest.approx(np.percentile([500, 600, 700, 800, 1900], 95), abs=1)
    levels = {1: _summary(900), 2: _summary(1400), 4: _summary(1600), 8: _summary(1000)}
    assert knee(levels, 1500) == 2  # 8 passes but comes after a failing level
    assert knee({1: _summary(900, gap=120)}, 1500) is None
    assert knee({1: _summary(900, errors=1)}, 1500) is None


def test_mic_times_speech_start_and_end_on_its_clock():
    now = [100.0]

    async def fake_sleep(s):
        now[0] += s

    async def run():
        mic = Mic(SR, clock=lambda: now[0], sleep=fake_sleep)
        utt = Utterance("c", 0, "en", "v", False, np.concatenate([silence(0.013), tone(0.5)]), 0.013, 0.513)
        first = await mic.next_frame()  # 20 ms of silence before anything is said
        saying = mic.say(utt)
        frames = [await mic.next_frame() for _ in range(30)]
        return first, saying, frames

    import asyncio
    first, saying, frames = asyncio.run(run())
    assert not first.any()
    # frame 1 leaves at 100.04 and carries utterance samples 0..320: speech started 0.007 s before its end
    assert saying.started.result() == pytest.approx(100.04 - (0.02 - 0.013))
    assert saying.ended.result() - saying.started.result() == pytest.approx(0.5)
    assert not frames[-1].any()  # after the utterance: silence again


def test_report_compare_and_markdown(tmp_path):
    runs = [{"variant": v, "concurrency": c, "seconds": 1.0, "server": {"cpu_mean_percent": 50.0},
             "call_errors": [], "turns": [],
             "summary": {**summarize([]), "v2v_p50_ms": p50, "v2v_p95_ms": p50 + 100, "v2v_mean_ms": p50}}
            for v, c, p50 in [("on", 1, 800.0), ("off", 1, 1000.0), ("on", 2, 900.0), ("off", 2, 1200.0)]]
    ab = report.compare(runs, ["on", "off"])
    assert ab[0]["v2v_p50_ms"] == {"a": 800.0, "b": 1000.0, "diff": 200.0, "ratio": 1.25}
    assert ab[1]["v2v_p95_ms"]["diff"] == 300.0
    result = {"transport": "ws", "command": "python -m bench", "threshold_ms": 1500.0, "max_gap_ms": 100.0,
              "knee": {"on": 2, "off": 2}, "variants": [{"name": "on"}, {"name": "off"}], "notes": [],
              "runs": runs, "ab": ab}
    md = report.markdown(result)
    assert "| on | 2 |" in md and "| 1 | 800 | 1000 | 200 | 1.25 |" in md
    pytest.importorskip("matplotlib")
    paths = report.write(result, tmp_path)
    assert [p.name for p in paths] == ["results.json", "summary.md", "latency_cdf.png", "stages.png"]
    assert json.loads(paths[0].read_text())["knee"] == {"on": 2, "off": 2}


def test_synthetic_conversation_marks_the_end_of_speech():
    conv = synthetic_conversation(phrases=((0.4, 0.3, 0.2), (0.5,)), barge=(1,))
    u0, u1 = conv.turns
    assert u0.speech_end_s == pytest.approx(0.9, abs=0.005) and u1.barge_in
    assert voiced_bounds(u0.at_rate(48_000), 48_000)[1] == pytest.approx(0.9, abs=0.006)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (apt-get install espeak-ng)")
def test_corpus_is_synthesized_once_and_cached(tmp_path):
    spec = [("t", "en", "espeak-us-f", [["Hello there.", "How are you?"], ["!Stop."]])]
    logs = []
    convs = load_corpus(tmp_path, spec, log=logs.append)
    assert len(logs) == 1 and (tmp_path / spec_hash(spec) / "manifest.json").exists()
    u0, u1 = convs[0].turns
    assert u1.barge_in and not u0.barge_in
    assert u0.speech_end_s == pytest.approx(voiced_bounds(u0.pcm, SR)[1])
    assert u0.speech_end_s > 1.0  # two phrases with a pause between
    again = load_corpus(tmp_path, spec, log=logs.append)
    assert len(logs) == 1  # from the cache
    assert np.array_equal(again[0].turns[0].pcm, u0.pcm) and again[0].turns[0].speech_end_s == u0.speech_end_s


def test_gaps_during_the_callers_own_stalls_are_left_out_and_flagged():
    p = Playout()
    _reply(p, 2.5, 0.6, "r", hole_at=0.2, hole=0.15)  # the hole: 2.7 .. 2.85
    turns = [_turn(0, 0.0, 2.0)]
    (clean,) = analyze(0, turns, p.chunks, [])
    assert clean.max_gap_ms == pytest.approx(150, abs=0.5) and not clean.caller_stalled
    (stalled,) = analyze(0, turns, p.chunks, [], stalls=[(2.69, 2.86)])
    assert stalled.max_gap_ms == 0 and stalled.caller_stall_gaps == 1
    (late,) = analyze(0, turns, p.chunks, [], stalls=[(2.1, 2.2)])  # between speech end and reply
    assert late.caller_stalled and late.max_gap_ms == pytest.approx(150, abs=0.5)


def test_a_ws_client_flush_stops_the_queued_reply_and_sets_the_barge_in_stop():
    p = Playout()
    p.add(tone(2.0), SR, t_arrival=1.0, response_id="r")  # a whole reply at once, faster than real time
    p.flush(1.7)  # speech_started arrived at 1.7: the rest is never played
    assert p.last_voice_end() == pytest.approx(1.7)
    assert p.first_voice_after(1.8) is None
    (_, rec) = analyze(0, [_turn(0, 0.0, 0.5), _turn(1, 1.3, 2.5, barge=True)], p.chunks, [])
    assert rec.barge_stop_ms == pytest.approx(400, abs=0.5)
