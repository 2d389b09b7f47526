"""Text-side helpers of the Whisper tokenizer: the Chinese script, the language pick among the
candidates, and the loop detector's token budget and repeat test."""
from __future__ import annotations

from collections.abc import Sequence


def script_converter(script: str | None):
    """Text → text in the wanted Chinese script (OpenCC's t2s / s2t tables; identity for None)."""
    if script is None:
        return lambda text: text
    import opencc

    return opencc.OpenCC("t2s" if script == "simplified" else "s2t").convert


def pick_language(ranked: Sequence[tuple[str, float]], candidates: set[str]) -> str:
    """The most likely of `candidates` (any language when empty) in Whisper's ranking, most likely
    first; codes come as "en" (faster-whisper) or "<|en|>" (CTranslate2)."""
    codes = [code.strip("<|>") for code, _ in ranked]
    return next((c for c in codes if not candidates or c in candidates), codes[0])


def token_budget(seconds: float) -> int:
    """More text tokens than anyone says in `seconds`: more means the decoder is looping."""
    return 12 + int(10 * seconds)


def repeats(ids: list[int], n: int = 3) -> bool:
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return len(set(grams)) < len(grams)
