"""Repetition-aware sampling rule of Step-Audio-TTS-3B's reference generator.

Before sampling each token: look at the last `window` (10) generated ids; if the most recent one
occurs there more than `threshold` (10%) of the time — i.e. at least twice — ban it (logit -inf).
Nothing is banned until the history holds a full window.

Where it applies: the in-process transformers path (`RepetitionAwareLogitsProcessor` below, to pass
in `logits_processor=`). vLLM's OpenAI-compatible server cannot take a Python processor per request:
the server must be started with a logits-processor plugin implementing `ban_repeated_last` (vLLM
>= 0.10 `--logits-processors`); docs/step-audio-decoder.md has the details.
"""
from __future__ import annotations

from collections.abc import Sequence

WINDOW = 10
THRESHOLD = 0.1


def banned_token(history: Sequence[int], window: int = WINDOW, threshold: float = THRESHOLD) -> int | None:
    """The token id to ban next, or None."""
    if len(history) < window:
        return None
    recent = history[-window:]
    last = recent[-1]
    return last if sum(1 for t in recent if t == last) / window > threshold else None


class RepetitionAwareLogitsProcessor:
    """transformers-compatible: __call__(input_ids (B, T), scores (B, V)) -> scores."""

    def __init__(self, window: int = WINDOW, threshold: float = THRESHOLD) -> None:
        self.window, self.threshold = window, threshold

    def __call__(self, input_ids, scores):
        for row in range(input_ids.shape[0]):
            ban = banned_token(input_ids[row].tolist(), self.window, self.threshold)
            if ban is not None:
                scores[row, ban] = float("-inf")
        return scores
