"""The bench's phone caller (Twilio Media Streams) against the real server on the fake stages:
turns are answered and measured on the audio alone, a barge-in clears the line."""
from __future__ import annotations

from bench import caller_twilio
from bench.corpus import synthetic_conversation
from bench.measure import analyze
from bench.mic import ScriptOptions
from tests.realtime_util import fake_config, running_server


async def test_a_phone_caller_is_answered_and_measured() -> None:
    cfg = fake_config(**{"llm.echo": False, "llm.reply": "One two three four five. Six seven eight nine ten."})
    async with running_server(cfg) as server:
        conv = synthetic_conversation(phrases=((0.6,), (0.5,), (0.5,)), barge=(1,))
        opts = ScriptOptions(quiet_s=0.4, think_s=(0.2, 0.3), lead_in_s=0.3, barge_after_s=0.3)
        timings, heard, events = await caller_twilio.call(str(server.make_url("/")), conv, opts)
    records = analyze(0, timings, heard.chunks, events)
    assert len(records) == 3
    answered = [r for r in records if r.v2v_ms is not None]
    assert len(answered) >= 2 and all(r.v2v_ms > 0 for r in answered)
    assert any(kind == {"type": "twilio.clear"} for _, kind in events)  # the barge-in cleared the line
