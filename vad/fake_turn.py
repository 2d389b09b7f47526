"""A fake end-of-turn model for tests and the fake stack: a fixed P(finished), or, with
`loudness_below`, "finished" when the last 300 ms of speech before the pause were quieter than
the level given (a falling, fading voice), so scripted audio can say either."""
from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from core.config import validate_options


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    probability: float = Field(0.9, ge=0, le=1, description="the answer for every pause")
    loudness_below: float | None = Field(None, gt=0, description="RMS (int16 units): quieter ends are finished")


class FakeTurnModel:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.calls = 0

    async def completion(self, audio: np.ndarray) -> float | None:
        self.calls += 1
        if self.opts.loudness_below is None:
            return self.opts.probability
        voiced = audio[np.abs(audio.astype(np.int32)) > 300]
        tail = voiced[-4800:].astype(np.float64)
        rms = float(np.sqrt(np.mean(tail ** 2))) if len(tail) else 0.0
        return 0.95 if rms < self.opts.loudness_below else 0.0


def build(options: dict, env) -> FakeTurnModel:
    return FakeTurnModel(validate_options(Options, "turn", options))
