"""The VAD stage's interface.

Audio in is 16 kHz mono int16, 20 ms (320-sample) frames, everywhere on the input path.
A VAD only says how likely the latest frame is speech; how long a pause must be before it
counts is the controller's business (controller/turns.py), so thresholds live in one place.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

SAMPLE_RATE = 16_000
FRAME_SAMPLES = 320  # 20 ms


class VoiceActivity(Protocol):
    """Per-session detector. Not shared between sessions (it keeps recurrent state)."""

    def process(self, frame: np.ndarray) -> float:
        """Speech probability (0..1) for one 20 ms int16 frame."""
        ...

    def reset(self) -> None: ...


class VoiceActivityFactory(Protocol):
    """Shared per server: holds the loaded model, hands each session its own detector."""

    def create(self) -> VoiceActivity: ...


class TurnCompletion(Protocol):
    """Shared per server: an end-of-turn model. At a pause the controller asks how likely it is
    that the speaker has finished; its end-of-turn policy (controller/turn_policy.py) turns the
    answer into how long to wait. Stateless: the session passes the turn's audio each time."""

    async def completion(self, audio: np.ndarray) -> float | None:
        """P(turn finished) for 16 kHz int16 audio ending now (the turn so far, pause included;
        the model looks at the last seconds only). None: no opinion (the fixed wait applies)."""
        ...
