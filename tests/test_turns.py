from controller.config import ControllerConfig
from controller.states import Signal, State
from controller.turns import TurnDetector

import pytest


def run(det: TurnDetector, state: State, speech: bool, ms: int, t0: int = 0):
    signals = []
    for i in range(ms // 20):
        sig = det.update(state, speech, t0 + (i + 1) * 20)
        if sig:
            signals.append((sig, t0 + (i + 1) * 20))
    return signals


def test_onset_pause_and_end_of_turn_timing():
    cfg = ControllerConfig(onset_ms=60, pause_ms=200, end_of_turn_ms=600)
    det = TurnDetector(cfg)
    assert run(det, State.SILENCE, True, 60) == [(Signal.SPEECH, 60)]
    assert run(det, State.USER_SPEAKING, False, 200, 60)[0] == (Signal.PAUSE, 260)
    assert det.last_speech_ms == 60
    # the silence keeps counting in the paused state: end of turn at 600 ms of silence
    sig = run(det, State.USER_PAUSED, False, 400, 260)
    assert sig[0] == (Signal.END_OF_TURN, 660)


def test_barge_in_needs_sustained_speech():
    det = TurnDetector(ControllerConfig(barge_in_ms=240))
    assert run(det, State.BOT_REPLYING, True, 220) == []
    assert run(det, State.BOT_REPLYING, False, 140) == []  # a real gap: the burst is over
    assert run(det, State.BOT_REPLYING, True, 220) == []
    assert run(det, State.BOT_REPLYING, True, 20)[0][0] is Signal.BARGE_IN


def test_barge_in_bridges_short_dips_between_words():
    det = TurnDetector(ControllerConfig(barge_in_ms=240))
    assert run(det, State.BOT_REPLYING, True, 140) == []
    assert run(det, State.BOT_REPLYING, False, 60) == []  # between two words
    assert run(det, State.BOT_REPLYING, True, 100)[0][0] is Signal.BARGE_IN


@pytest.mark.parametrize("text,longer", [("I want to go and", True), ("What time is it?", False)])
def test_transcript_hints_move_the_end_of_turn(text, longer):
    cfg = ControllerConfig(end_of_turn_ms=600)
    det = TurnDetector(cfg)
    det.hint(text)
    assert (det.end_of_turn_ms > 600) is longer
    assert (det.end_of_turn_ms < 600) is (not longer)


def test_hints_can_be_switched_off():
    det = TurnDetector(ControllerConfig(eot_hints=False))
    det.hint("and")
    assert det.end_of_turn_ms == ControllerConfig().end_of_turn_ms


def test_config_rejects_end_of_turn_shorter_than_pause():
    with pytest.raises(ValueError):
        ControllerConfig(pause_ms=500, end_of_turn_ms=400)


def test_a_full_stop_alone_does_not_shorten_the_wait():
    det = TurnDetector(ControllerConfig(end_of_turn_ms=600))
    det.hint("I would like a coffee.")
    assert det.end_of_turn_ms == 600
