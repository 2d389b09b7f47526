"""decoder.clause_pipeline: the model work of each span says when its audio is first needed
(core.scheduler.needed_at), so that the TTS lane can put a long reply's later sentences behind
another caller's first words."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace

import numpy as np

from core.scheduler import needed_at
from decoder.clause_pipeline import ClausePipeline


class _Recorder(ClausePipeline):
    """One second of tone per clause; records `needed_at` as the lane would read it."""

    sample_rate = 16_000
    chunk_s = 0.2
    options = SimpleNamespace(first_clause_words=0, lookahead=8)

    def __init__(self) -> None:
        self.asked: list[float | None] = []

    async def span_audio(self, clause: str) -> AsyncIterator[np.ndarray]:
        self.asked.append(needed_at.get())
        await asyncio.sleep(0.3 if len(self.asked) == 3 else 0.01)  # the third span is slow to come
        t = np.arange(self.sample_rate) / self.sample_rate
        yield (3000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)


async def _text() -> AsyncIterator[str]:
    for sentence in ("One two three.", "Four five six.", "Seven eight nine.", "Ten eleven."):
        yield sentence + " "


async def test_each_span_after_the_first_is_needed_when_the_audio_before_it_has_played():
    tts = _Recorder()
    t0 = time.monotonic()
    chunks = [c async for c in tts.synthesize(_text())]
    t1 = time.monotonic()
    assert len(tts.asked) == 4 and tts.asked[0] is None  # the first words: needed now (the ticket's deadline)
    made = 0.0
    for asked in tts.asked[1:]:
        made += 1.0
        # t_first (when the first span was ready) + the audio made so far - the last span's time to come
        assert t0 + made - (t1 - t0) <= asked <= t1 + made
    # the third span took 0.3 s to come: the fourth is asked for that much sooner
    assert tts.asked[2] - tts.asked[1] > 0.9 and tts.asked[3] - tts.asked[2] < 0.8
    assert abs(sum(c.seconds for c in chunks) - 4.0) < 0.05
    assert needed_at.get() is None  # set in the synthesis task's context only


class _Dropped(_Recorder):
    """The second span's work is dropped before it runs, as when Reply.cancel drops the ticket."""

    async def span_audio(self, clause: str) -> AsyncIterator[np.ndarray]:
        self.asked.append(needed_at.get())
        if len(self.asked) == 2:
            from core.scheduler import WorkDropped

            raise WorkDropped("tts: every ticket was dropped")
        t = np.arange(self.sample_rate) / self.sample_rate
        yield (3000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)


async def test_dropped_work_ends_the_reply_without_an_error_in_the_log(caplog):
    import pytest

    from core.scheduler import WorkDropped

    got = []
    with pytest.raises(WorkDropped):
        async for chunk in _Dropped().synthesize(_text()):
            got.append(chunk)
    assert got  # the first sentence was spoken
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
