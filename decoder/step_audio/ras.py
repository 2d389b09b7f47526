"""Repetition-aware sampling rule of Step-Audio-TTS-3B's reference generator.

Before sampling each token: look at the last `window` (10) ids of the sequence so far — prompt ids
included, as the reference's processor sees `input_ids` — and if the most recent one occurs there
more than `threshold` (10%) of the time, i.e. at least twice, ban it (logit -inf). Nothing is
banned while the whole sequence is shorter than the window.

Where it applies: in-process with transformers (`RepetitionAwareLogitsProcessor` below, passed in
`logits_processor=`; hf_source.py), and over an OpenAI-compatible completions server by rejection
(vllm_source.py: a server cannot take a Python processor per request).
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


def violations(prompt: Sequence[int], generated: Sequence[int]) -> int:
    """How many generated ids the rule would have banned when they were drawn (0 under the rule)."""
    history, bad = list(prompt), 0
    for token in generated:
        bad += token == banned_token(history)
        history.append(token)
    return bad


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
