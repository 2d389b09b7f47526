"""Step-Audio's 2:3 interleave of the two code streams.

Every group is 2 linguistic codes (16.7 Hz) then 3 semantic codes (25 Hz): 120 ms of speech.
In the LLM's vocabulary a linguistic code c is <audio_c> and a semantic code c is
<audio_{1024 + c}>; the token id of <audio_N> is 65536 + N. Only whole groups are emitted,
as soon as both streams have them (the reference drops an incomplete last group too).
"""
from __future__ import annotations

from collections.abc import Sequence

from streaming_tokenizer.step_audio.loader import LINGUISTIC_CODES

AUDIO_TOKEN_ID_OFFSET = 65536
SEMANTIC_OFFSET = LINGUISTIC_CODES  # 1024


def complete_groups(n_linguistic: int, n_semantic: int) -> int:
    return min(n_linguistic // 2, n_semantic // 3)


def interleave(linguistic: Sequence[int], semantic: Sequence[int], start_group: int = 0) -> list[int]:
    """<audio_N> numbers N for every complete group from start_group on."""
    out: list[int] = []
    for g in range(start_group, complete_groups(len(linguistic), len(semantic))):
        out += linguistic[2 * g:2 * g + 2]
        out += [SEMANTIC_OFFSET + c for c in semantic[3 * g:3 * g + 3]]
    return out


def render(audio_numbers: Sequence[int]) -> str:
    return "".join(f"<audio_{n}>" for n in audio_numbers)


def token_ids(audio_numbers: Sequence[int]) -> list[int]:
    return [AUDIO_TOKEN_ID_OFFSET + n for n in audio_numbers]
