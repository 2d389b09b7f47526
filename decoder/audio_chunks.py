"""Helpers shared by the TTS decoders: cutting a span's audio into ~200 ms chunks, picking the
language of a clause by its script."""
from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from decoder.base import AudioChunk

_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff]")
_HANGUL = re.compile(r"[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df]")
_CJK = "\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
# A CJK run: from a CJK character to the last one before a Latin letter (digits and punctuation
# between them stay in the run: "我有3个"), plus its trailing punctuation.
_CJK_RUN = re.compile(rf"[{_CJK}](?:[^A-Za-z]*[{_CJK}])?[^A-Za-z0-9{_CJK}]*")


def script_language(text: str) -> str | None:
    """'ja', 'ko' or 'zh' when the text is written in that language's script, else None.

    Kana decides Japanese before Han does, since Japanese text mixes both.
    """
    if _KANA.search(text):
        return "ja"
    if _HANGUL.search(text):
        return "ko"
    if _HAN.search(text):
        return "zh"
    return None


def script_runs(text: str) -> list[str]:
    """The clause cut where it switches between a CJK script and the rest ("OK. 好的。" ->
    ["OK.", "好的。"]), so each part goes to a voice that can say it. Runs without a letter or
    digit (stray punctuation) are dropped."""
    runs, pos = [], 0
    for m in _CJK_RUN.finditer(text):
        runs += [text[pos:m.start()], m.group()]
        pos = m.end()
    runs.append(text[pos:])
    return [r.strip() for r in runs if any(ch.isalnum() for ch in r)]


def chunked(pcm: np.ndarray, sample_rate: int, chunk_s: float, text: str) -> Iterator[AudioChunk]:
    """One span's audio as chunks of about chunk_s; the span's text rides on the first chunk only
    (the convention the controller's heard_text() relies on)."""
    step = max(1, int(chunk_s * sample_rate))
    for i in range(0, len(pcm), step):
        yield AudioChunk(pcm[i:i + step], sample_rate, text if i == 0 else "")


def _loud_windows(pcm: np.ndarray, sample_rate: int, threshold_dbfs: float) -> tuple[np.ndarray, int]:
    """Indices of the 5 ms windows louder than threshold_dbfs, and the window length."""
    win = max(1, sample_rate // 200)
    n = len(pcm) // win
    frames = pcm[: n * win].astype(np.float32).reshape(n, win) / 32768.0
    return np.nonzero(np.sqrt((frames ** 2).mean(axis=1)) > 10 ** (threshold_dbfs / 20))[0], win


def trim_leading_silence(pcm: np.ndarray, sample_rate: int, threshold_dbfs: float = -50.0,
                         keep_ms: float = 5.0) -> np.ndarray:
    """int16 audio without the silence a TTS voice puts before the first word (piper: 35-45 ms),
    keeping keep_ms before the first 5 ms window louder than threshold_dbfs. The first clause of a
    reply is cut this way: that silence is pure latency. All-silent audio is returned as is."""
    loud, win = _loud_windows(pcm, sample_rate, threshold_dbfs)
    if len(loud) == 0:
        return pcm
    return pcm[max(0, int(loud[0]) * win - int(keep_ms * sample_rate / 1000)):]


def trim_trailing_silence(pcm: np.ndarray, sample_rate: int, threshold_dbfs: float = -50.0,
                          keep_ms: float = 40.0) -> np.ndarray:
    """int16 audio without the pause a TTS voice leaves after a sentence (piper: 135-245 ms),
    keeping keep_ms after the last loud 5 ms window. For a clause cut mid-sentence (the first
    words of a reply), where that pause would break the sentence in two."""
    loud, win = _loud_windows(pcm, sample_rate, threshold_dbfs)
    if len(loud) == 0:
        return pcm
    return pcm[: (int(loud[-1]) + 1) * win + int(keep_ms * sample_rate / 1000)]


async def aclose_quietly(it: Any) -> None:
    """Close an async iterator if it can be closed (async generators can; plain iterators may not)."""
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()

