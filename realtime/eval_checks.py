"""The checks of `step-realtime eval` (realtime/eval.py): pure functions of one turn's reply, each
returning "" when it holds, else why not (the text lands in the JSON result)."""
from __future__ import annotations

import json
import re
from functools import lru_cache

_HAN = re.compile(r"[\u3400-\u9fff]")
_LATIN_WORD = re.compile(r"[A-Za-z]{2,}")
# What a speaking voice cannot say: list items, headings, emphasis, code, tables, JSON.
_MARKDOWN = re.compile(r"(^|\n)\s*([-*•]|\d+[.)]|#{1,6})\s|\*\*|__|`|\|\s*-{3}|^\s*[\[{]\s*\"", re.M)


@lru_cache(maxsize=1)
def _to_simplified():
    import opencc

    return opencc.OpenCC("t2s").convert


def language_problem(text: str, language: str) -> str:
    """zh: mostly Han characters, and simplified ones; en: no Han characters."""
    han = _HAN.findall(text)
    latin = _LATIN_WORD.findall(text)
    if language == "zh":
        if len(han) < max(2, len(latin)):  # a Latin word against each Han character at least
            return f"not Chinese: {len(han)} Han characters, {len(latin)} Latin words"
        traditional = [ch for ch in set(han) if _to_simplified()(ch) != ch]
        if traditional:
            return f"traditional characters: {''.join(sorted(traditional))}"
        return ""
    if language == "en":
        return f"Han characters in an English reply: {''.join(han[:10])}" if han else ""
    raise ValueError(f"unknown language {language!r} (en, zh)")


# A numbered list read out in one line (the transcript joins the lines): "… 1. a map 2. boots"
# … and bullets: "you can choose: - boots - a map"
_INLINE_LIST = re.compile(r"(^|\s)1[.)]\s.{1,200}?\s2[.)]\s|(^|\s)[-*•]\s[^-*•]{1,200}?\s[-*•]\s", re.S)


def markdown_problem(text: str) -> str:
    match = _MARKDOWN.search(text) or _INLINE_LIST.search(text)
    return f"markdown, a list or JSON: {match.group(0).strip()[:40]!r}" if match else ""


def spoken_words(text: str) -> float:
    """Length in words: whitespace-separated words, a Han character counting as half a word
    (a Chinese word is about two characters)."""
    han = len(_HAN.findall(text))
    return len(_HAN.sub(" ", text).split()) + han / 2


def length_problem(text: str, max_words: float, min_words: float = 1) -> str:
    n = spoken_words(text)
    if n < min_words:
        return f"too short: {n:g} words"
    return f"too long: {n:g} words > {max_words:g}" if n > max_words else ""


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower())


def words_problem(text: str, any_of: list[str], all_of: list[str]) -> str:
    said = _norm(text)
    if any_of and not any(_norm(w) in said for w in any_of):
        return f"says none of {any_of}"
    missing = [w for w in all_of if _norm(w) not in said]
    return f"does not say {missing}" if missing else ""


def call_problem(expected: dict | None, call: dict | None) -> str:
    """`expected`: {name, arguments: {key: value or [alternatives]}}; strings compare
    case-insensitively, numbers as text; None: no call expected."""
    if expected is None:
        return f"called {call['name']} (no call expected)" if call is not None else ""
    if call is None:
        return f"no call (expected {expected.get('name')})"
    if call["name"] != expected.get("name"):
        return f"called {call['name']} (expected {expected.get('name')})"
    try:
        args = json.loads(call["arguments"] or "{}")
    except ValueError:
        return f"arguments are not JSON: {call['arguments']!r}"
    if not isinstance(args, dict):
        return f"arguments are not an object: {call['arguments']!r}"
    norm = lambda v: str(v).strip().lower()  # noqa: E731
    for key, want in (expected.get("arguments") or {}).items():
        options = want if isinstance(want, list) else [want]
        if key not in args or norm(args[key]) not in {norm(o) for o in options}:
            return f"{key}={args.get(key)!r} (expected {' or '.join(map(str, options))})"
    return ""
