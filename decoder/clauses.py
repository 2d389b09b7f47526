"""Cut streaming LLM text into clauses, the unit the TTS speaks.

The first clause is sent to TTS as early as possible (a comma is enough once it has a few
words); later ones wait for a sentence end or a length cap, which sounds more natural.
"""
from __future__ import annotations

import re
from collections.abc import AsyncIterator

_WORD = re.compile(r"\S+(?=\s)")  # a word known to be complete: whitespace follows it
_SENTENCE_END = ".!?。！？\n"
_CLAUSE_END = ",;:，；：、"
# Full-width (CJK) punctuation ends a clause even with no space after it: CJK text has no spaces.
_FULL_WIDTH = "。！？，；：、\n"
# A '.' after these is not a sentence end ("Mr. Smith", "e.g. this").
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "vs", "e.g", "i.e", "jr", "sr"}


def _is_abbreviation(buf: str, dot: int) -> bool:
    start = dot
    while start > 0 and (buf[start - 1].isalpha() or buf[start - 1] == "."):
        start -= 1
    word = buf[start:dot].lower()
    return word in _ABBREVIATIONS


def _is_cjk(ch: str) -> bool:
    return "\u1100" <= ch <= "\u11ff" or "\u3040" <= ch <= "\u30ff" or "\u3400" <= ch <= "\u9fff" \
        or "\uac00" <= ch <= "\ud7af" or "\uf900" <= ch <= "\ufaff"


def _ends_here(buf: str, i: int) -> bool:
    """Punctuation at i is complete: full-width, or whitespace follows it. ASCII punctuation at the
    very end of buf waits: the next piece may be the "5" of "3.5"."""
    return buf[i] in _FULL_WIDTH or (i + 1 < len(buf) and buf[i + 1].isspace())


def _ends_sentence(buf: str, i: int) -> bool:
    # A '.' inside a number ("3.5") is followed by no space; an abbreviation is.
    return buf[i] in _SENTENCE_END and _ends_here(buf, i) and not (buf[i] == "." and _is_abbreviation(buf, i))


def _cut_index(buf: str, first: bool, min_chars: int, max_chars: int, first_words: int = 0) -> int:
    """Index just past where buf should be cut, or -1 to wait for more text."""
    length = 0  # weighted: a CJK character is a syllable, about three Latin letters
    for i, ch in enumerate(buf):
        length += 3 if _is_cjk(ch) else 1
        if _ends_sentence(buf, i):
            if length >= (2 if first else min_chars):
                return i + 1
        elif ch in _CLAUSE_END and first and _ends_here(buf, i) and length >= min_chars:
            return i + 1
    if first and first_words:
        # No punctuation yet: the first clause goes to TTS after a few words all the same, so
        # the caller hears the reply start while the LLM is still writing its first sentence.
        ends = [m.end() for m in _WORD.finditer(buf)]
        if len(ends) >= first_words and not any(_is_cjk(ch) for ch in buf):
            return ends[first_words - 1]
    if len(buf) >= max_chars:
        cut = buf.rfind(" ", 0, max_chars)
        return cut + 1 if cut > 0 else max_chars
    return -1


def sentence_end(text: str) -> int:
    """Index just past the first complete sentence in `text`, or -1 if none is complete yet: a
    sentence end followed by whitespace (or full-width), not after an abbreviation, with some text
    before it (the rules `clauses` cuts by). A '.' at the very end is not one yet:
    the next piece may be the "5" of "3.5"."""
    return next((i + 1 for i in range(len(text)) if _ends_sentence(text, i) and text[:i].strip()), -1)


async def clauses(
    pieces: AsyncIterator[str], min_chars: int = 12, max_chars: int = 160, first_words: int = 5
) -> AsyncIterator[str]:
    """Yield stripped clauses from a stream of text pieces; the rest is flushed at the end.
    `first_words`: cut the first clause after this many words if no punctuation came (0: never)."""
    buf = ""
    first = True
    async for piece in pieces:
        buf += piece
        while True:
            cut = _cut_index(buf, first, min_chars, max_chars, first_words)
            if cut < 0:
                break
            clause, buf = buf[:cut].strip(), buf[cut:]
            if clause:
                first = False
                yield clause
    if buf.strip():
        yield buf.strip()
