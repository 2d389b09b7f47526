"""Speculation counters and per-turn latency figures."""
from __future__ import annotations

import time
from dataclasses import dataclass

from controller.events import TurnMetrics


@dataclass
class SpeculationStats:
    """Kept per session, each feeding the server's (its parent): started = committed +
    discarded + in flight."""

    started: int = 0
    committed: int = 0
    discarded: int = 0
    parent: "SpeculationStats | None" = None

    def count(self, what: str) -> None:
        setattr(self, what, getattr(self, what) + 1)
        if self.parent is not None:
            self.parent.count(what)

    @property
    def commit_rate(self) -> float | None:
        done = self.committed + self.discarded
        return self.committed / done if done else None

    def as_dict(self) -> dict:
        return {"started": self.started, "committed": self.committed, "discarded": self.discarded,
                "commit_rate": self.commit_rate}


def _ms(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round((b - a) * 1000, 1)


def turn_metrics(reply, eot_wall: float | None, detector, speech_start_ms: int) -> TurnMetrics:
    """Server-side view of one turn. `saved_ms`: how much later the first audio would have
    been had the reply started only at the confirmed end of turn (same stage timings)."""
    first = reply.t_first_played
    values: dict[str, float | None] = {
        "end_of_turn_delay_ms": float(detector.end_of_turn_ms) if detector is not None else None,
        # the end-of-turn model's P(finished) at the last pause (None: no model, or it had not answered)
        "end_of_turn_p": getattr(detector, "probability", None),
        "end_of_turn_text_p": getattr(detector, "text_probability", None),  # the words' P(end), chat model
        "asr_ms": _ms(reply.t_start, reply.t_input),
        "llm_ttft_ms": _ms(reply.t_input, reply.t_first_token),
        "tts_first_audio_ms": _ms(reply.t_first_token, reply.t_first_audio),
        # Whole-reply durations (the offline `chat` command reports them; /metrics shows medians).
        "llm_ms": _ms(reply.t_input, getattr(reply, "t_last_token", None)),
        "tts_ms": _ms(reply.t_first_token, getattr(reply, "t_audio_done", None)),
        "eot_to_first_audio_ms": _ms(eot_wall, first),
        "speech_ms": float(max(0, detector.last_speech_ms - speech_start_ms)) if detector is not None else None,
    }
    if reply.speculative and eot_wall is not None and reply.t_first_audio is not None:
        pipeline = reply.t_first_audio - reply.t_start
        actual = max(0.0, (first or time.monotonic()) - eot_wall)
        values["saved_ms"] = round(max(0.0, pipeline - actual) * 1000, 1)
    return TurnMetrics(reply.response_id, reply.speculative, values)
