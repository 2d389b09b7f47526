from types import SimpleNamespace

from controller.metrics import SpeculationStats, turn_metrics


def test_session_stats_feed_the_server_stats():
    server = SpeculationStats()
    a, b = SpeculationStats(parent=server), SpeculationStats(parent=server)
    for what in ("started", "committed", "started", "discarded"):
        a.count(what)
    b.count("started")
    b.count("committed")
    assert (a.started, a.committed, a.discarded) == (2, 1, 1)
    assert server.as_dict() == {"started": 3, "committed": 2, "discarded": 1, "commit_rate": 2 / 3}
    assert SpeculationStats().commit_rate is None


def test_saved_latency_is_the_pipeline_time_the_caller_did_not_wait():
    # the speculation took 0.9 s to its first audio; it was ready 0.5 s before the end of turn
    reply = SimpleNamespace(response_id="r", speculative=True, t_start=10.0, t_input=10.3,
                            t_first_token=10.4, t_first_audio=10.9, t_first_played=11.41)
    detector = SimpleNamespace(end_of_turn_ms=650, last_speech_ms=3000)
    m = turn_metrics(reply, 11.4, detector, 1000)
    assert m.values["eot_to_first_audio_ms"] == 10.0
    assert m.values["saved_ms"] == 890.0
    assert m.values["asr_ms"] == 300.0 and m.values["speech_ms"] == 2000.0
