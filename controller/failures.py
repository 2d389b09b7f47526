"""What a client is told when a stage fails: the problem in plain words, never a traceback or an
exception's own text (which may hold internal URLs, paths or library details). The full exception
is logged where it is caught."""
from __future__ import annotations

import asyncio

# Which stage failed: the package its class is defined in (a stage's own error), else the deepest
# frame of ours it passed through (a library error raised under decoder/piper_tts.py: synthesis).
_STAGE_BY_PACKAGE = {
    "llm": "the language model",
    "decoder": "speech synthesis",
    "streaming_tokenizer": "speech recognition",
    "vad": "turn detection",
    "context": "the conversation history",
}


class StageTimeout(TimeoutError):
    """A stage missed its deadline (controller config asr_timeout_s / tts_timeout_s)."""

    def __init__(self, stage: str, seconds: float) -> None:
        super().__init__(f"{stage} took longer than {seconds:g} s")
        self.stage, self.seconds = stage, seconds


def _stage(exc: BaseException) -> str | None:
    for cls in type(exc).__mro__:  # a stage's own error class (llm.openai_chat.LLMError) says it
        stage = _STAGE_BY_PACKAGE.get(cls.__module__.split(".")[0])
        if stage is not None:
            return stage
    tb, deepest = exc.__traceback__, None
    while tb is not None:
        package = str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0]
        deepest = _STAGE_BY_PACKAGE.get(package, deepest)
        tb = tb.tb_next
    return deepest


def describe_failure(what: str, exc: BaseException) -> str:
    """E.g. describe_failure("the reply failed", exc) → "the reply failed: the language model is not
    reachable right now; try again in a moment"."""
    stage = _stage(exc)
    if isinstance(exc, StageTimeout):
        cause = f"{exc.stage} took longer than {exc.seconds:g} s"
    elif isinstance(exc, ConnectionError):
        cause = f"{stage or 'a model server'} is not reachable right now; try again in a moment"
    elif isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        cause = f"{stage or 'a model'} took too long to answer"
    elif isinstance(exc, MemoryError):
        cause = "the server ran out of memory"
    elif stage is not None:
        cause = f"{stage} failed"
    else:
        cause = "an internal error (it was logged on the server)"
    return f"{what}: {cause}"
