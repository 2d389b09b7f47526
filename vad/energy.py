"""A loudness threshold as a VAD: no model, deterministic. Used by tests and as a fallback."""
from __future__ import annotations

import numpy as np


class EnergyVad:
    def __init__(self, threshold_dbfs: float = -40.0) -> None:
        self._threshold = threshold_dbfs

    def process(self, frame: np.ndarray) -> float:
        x = frame.astype(np.float32) / 32768.0
        rms = float(np.sqrt(np.mean(x * x)) + 1e-9)
        dbfs = 20.0 * np.log10(rms)
        return 1.0 if dbfs > self._threshold else 0.0

    def reset(self) -> None:
        pass


class EnergyVadFactory:
    def __init__(self, threshold_dbfs: float = -40.0) -> None:
        self.threshold_dbfs = threshold_dbfs

    def create(self) -> EnergyVad:
        return EnergyVad(self.threshold_dbfs)


def build(options: dict, env) -> EnergyVadFactory:
    from pydantic import BaseModel, ConfigDict

    from core.config import validate_options

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        threshold_dbfs: float = -40.0

    opts = validate_options(Options, "vad", options)
    return EnergyVadFactory(opts.threshold_dbfs)
