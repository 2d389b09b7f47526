"""Turns VAD decisions into timed signals: onset, pause, end of turn, barge-in.

Everything is counted in milliseconds of audio, not wall time, so a scripted timeline in a test
behaves exactly like a live caller.
"""
from __future__ import annotations

from controller.config import ControllerConfig
from controller.states import Signal, State
from controller.turn_policy import hinted_wait_ms, model_wait_ms, text_wait_ms

FRAME_MS = 20
BRIDGE_MS = 120  # a silence shorter than this does not end a burst of speech


class TurnDetector:
    def __init__(self, cfg: ControllerConfig) -> None:
        self.cfg = cfg
        self.speech_run_ms = 0  # consecutive speech
        self.talk_ms = 0  # speech in the current burst, bridging dips shorter than BRIDGE_MS
        self.silence_run_ms = 0  # consecutive silence
        self.last_speech_ms = 0  # audio time of the end of the last speech frame
        self.turn_ms = 0  # length of the current user turn
        self.end_of_turn_ms = cfg.end_of_turn_ms  # this pause's wait: moved by the turn model and hints
        self.model_spoke = False  # the end-of-turn model has scored this pause
        self.probability: float | None = None  # its P(finished) for this pause (turn metrics show it)
        self.transcript: str | None = None  # this pause's transcript, once known
        self.text_probability: float | None = None  # the words' P(end) (llm/turn_end.py), once known
        self.pauses = 0  # pauses so far: a late answer about an earlier pause is ignored
        self.reply_unheard = False  # set by the controller: nothing of the reply was played yet

    def update(self, state: State, speech: bool, t_ms: int) -> Signal | None:
        if speech:
            self.speech_run_ms += FRAME_MS
            self.talk_ms += FRAME_MS
            self.silence_run_ms = 0
            self.last_speech_ms = t_ms
        else:
            self.silence_run_ms += FRAME_MS
            self.speech_run_ms = 0
            if self.silence_run_ms >= BRIDGE_MS:
                self.talk_ms = 0
        cfg = self.cfg
        if state in (State.USER_SPEAKING, State.USER_PAUSED):
            self.turn_ms += FRAME_MS
        match state:
            case State.SILENCE if self.speech_run_ms >= cfg.onset_ms:
                self.turn_ms = self.speech_run_ms
                self.new_pause()
                return Signal.SPEECH
            case State.USER_SPEAKING if self.turn_ms >= cfg.max_turn_s * 1000:
                return Signal.END_OF_TURN
            case State.USER_SPEAKING if self.silence_run_ms >= cfg.pause_ms:
                self.new_pause()
                return Signal.PAUSE
            case State.USER_PAUSED if self.speech_run_ms >= cfg.onset_ms:
                return Signal.SPEECH
            case State.USER_PAUSED if self.silence_run_ms >= self.end_of_turn_ms:
                return Signal.END_OF_TURN
            case State.BOT_REPLYING if self.reply_unheard and self.speech_run_ms >= cfg.onset_ms:
                return Signal.TAKE_BACK  # a pause, not the end: nothing was heard, nothing to interrupt
            case State.BOT_REPLYING if self.talk_ms >= cfg.barge_in_ms:
                # Speech, not one unbroken VAD run: the VAD dips between words, and a real
                # interruption should not have to wait for a long vowel.
                self.turn_ms = self.talk_ms
                self.new_pause()
                return Signal.BARGE_IN
        return None

    def new_pause(self) -> None:
        """Each pause is judged afresh: until the model answers, the fixed wait holds."""
        self.end_of_turn_ms = self.cfg.end_of_turn_ms
        self.model_spoke = False
        self.probability = None
        self.transcript: str | None = None
        self.text_probability = None
        self.pauses += 1

    def judged(self, probability: float) -> int:
        """The end-of-turn model's P(finished) for the current pause sets its wait (a transcript
        that came first may still lengthen it)."""
        self.end_of_turn_ms = model_wait_ms(self.cfg, probability)
        self.model_spoke = True
        self.probability = probability
        if self.text_probability is not None:
            self.end_of_turn_ms = text_wait_ms(self.cfg, self.end_of_turn_ms, probability, self.text_probability)
        if self.transcript and self.cfg.eot_hints:
            self.end_of_turn_ms = hinted_wait_ms(self.cfg, self.end_of_turn_ms, self.transcript, True)
        return self.end_of_turn_ms

    def words_judged(self, probability: float) -> int:
        """The chat model's P(end) of the pause's words: longer if they read as unfinished, the short
        wait if they clearly end a request the audio model doubted (controller/turn_policy.py)."""
        self.text_probability = probability
        self.end_of_turn_ms = text_wait_ms(self.cfg, self.end_of_turn_ms, self.probability, probability)
        return self.end_of_turn_ms

    def hint(self, transcript: str) -> None:
        """The pause's transcript: a trailing conjunction or filler means more is coming; without
        a model, a question mark means the thought is finished (controller/turn_policy.py)."""
        if not self.cfg.eot_hints or not transcript:
            return
        self.transcript = transcript
        self.end_of_turn_ms = hinted_wait_ms(self.cfg, self.end_of_turn_ms, transcript, self.model_spoke)
