"""Realtime `max_output_tokens` (session and one response.create): it lowers the LLM's limit, and a
reply it cuts ends at its last whole sentence. The official openai SDK as the client, fake stages."""
from __future__ import annotations

from contextlib import asynccontextmanager

import pytest
from openai import AsyncOpenAI

from realtime.protocol import ProtocolError, SessionIn, SessionSettings
from tests.realtime_util import append_events, fake_config, running_server, server_context, utterance
from tests.test_openai_sdk import receive_until

REPLY = "One two three. Four five six seven eight."


def test_session_settings_take_an_integer_or_inf_and_refuse_the_rest():
    s = SessionSettings(instructions="Be brief.")
    assert s.render()["max_output_tokens"] == "inf"
    s = s.apply(SessionIn(max_output_tokens=50))
    assert s.max_output_tokens == 50 and s.render()["max_output_tokens"] == 50
    assert s.apply(SessionIn(max_output_tokens="inf")).max_output_tokens is None
    assert s.apply(SessionIn()).max_output_tokens == 50  # absent: unchanged
    for bad in (0, 4097, "lots", 2.5, True):
        with pytest.raises(ProtocolError) as err:
            s.apply(SessionIn(max_output_tokens=bad))
        assert err.value.param == "session.max_output_tokens"


@asynccontextmanager
async def _connected():
    """(connection, events seen, the server's fake LLM), the session created."""
    config = fake_config(**{"llm.reply": REPLY, "llm.echo": False, "llm.token_delay_s": 0.002})
    async with running_server(config) as server:
        client = AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk-test")
        async with client.realtime.connect(model="step-realtime") as conn:
            seen: list = []
            await receive_until(conn, "session.created", seen)
            yield conn, seen, server_context(server).stages["llm"]


async def _turn(conn, seen: list):
    for event in append_events(utterance(1.0)):
        await conn.input_audio_buffer.append(audio=event["audio"])
    return await receive_until(conn, "response.done", seen)


def _transcript(done) -> str:
    message = next(o for o in done.response.output if o.type == "message")
    return message.content[0].transcript


async def test_a_sessions_limit_reaches_the_llm_and_the_cut_reply_ends_at_a_sentence():
    async with _connected() as (conn, seen, llm):
        await conn.session.update(session={"type": "realtime", "max_output_tokens": 6})
        updated = await receive_until(conn, "session.updated", seen)
        assert updated.session.max_output_tokens == 6
        done = await _turn(conn, seen)
        assert llm.streams[-1].max_tokens == 6
        # The fake stops after 6 words ("... Four five six") as a server would: not spoken.
        assert _transcript(done) == "One two three."
        assert done.response.status == "incomplete" and done.response.status_details.reason == "max_output_tokens"
        await conn.session.update(session={"type": "realtime", "max_output_tokens": "inf"})
        await receive_until(conn, "session.updated", seen)
        done = await _turn(conn, seen)
        assert llm.streams[-1].max_tokens is None and _transcript(done) == REPLY
        assert done.response.status == "completed"


async def test_response_create_limits_one_response_and_a_bad_value_is_an_error():
    async with _connected() as (conn, seen, llm):
        await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                  "content": [{"type": "input_text", "text": "Count."}]})
        await conn.response.create(response={"max_output_tokens": 8000})
        error = await receive_until(conn, "error", seen)
        assert error.error.param == "response.max_output_tokens"
        await conn.response.create(response={"max_output_tokens": 3})
        done = await receive_until(conn, "response.done", seen)
        assert llm.streams[-1].max_tokens == 3 and _transcript(done) == "One two three."
        await conn.response.create()  # the next response: the session's (no limit)
        done = await receive_until(conn, "response.done", seen)
        assert llm.streams[-1].max_tokens is None and _transcript(done) == REPLY
        await conn.session.update(session={"type": "realtime", "max_output_tokens": 3})
        await receive_until(conn, "session.updated", seen)
        await conn.response.create(response={"max_output_tokens": "inf"})  # lifts the session's, once
        done = await receive_until(conn, "response.done", seen)
        assert llm.streams[-1].max_tokens is None and _transcript(done) == REPLY
        await conn.response.create()
        done = await receive_until(conn, "response.done", seen)
        assert llm.streams[-1].max_tokens == 3 and _transcript(done) == "One two three."
