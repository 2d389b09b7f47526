"""conversation.item.create / .delete: the history (context/history.py), the client events, the
server events (checked against the openai SDK's types) and a WebSocket session whose replies see
the items (fake stages; the echo LLM answers "You said: <last user message>.")."""
from __future__ import annotations

import json

import pytest
from openai.types.realtime.realtime_server_event import RealtimeServerEvent
from pydantic import TypeAdapter

from context.history import ROOT, Context
from realtime import protocol as p
from tests.realtime_util import running_server, server_context, utterance, ws_client

SDK_EVENT = TypeAdapter(RealtimeServerEvent)


def text_item(role: str, text: str, **extra) -> dict:
    part = "output_text" if role == "assistant" else "input_text"
    return {"type": "message", "role": role, "content": [{"type": part, "text": text}], **extra}


# -- the history -------------------------------------------------------------------------------------

def test_context_add_message_places_and_deletes_items() -> None:
    ctx = Context("Be brief.")
    ctx.add_user("from audio", 1.0, "i1")
    ctx.add_message("assistant", "typed answer", "i2")
    ctx.add_message("user", "first of all", "i0", ROOT)
    ctx.add_message("user", "between", "i1b", "i1")
    assert [t.item_id for t in ctx.turns] == ["i0", "i1", "i1b", "i2"]
    assert ctx.previous_id("i1b") == "i1" and ctx.previous_id("i0") is None
    with pytest.raises(KeyError):
        ctx.add_message("user", "x", "i9", "nope")
    with pytest.raises(ValueError):
        ctx.add_message("tool", "x", "i9")
    assert ctx.delete("i1") and not ctx.delete("i1") and not ctx.delete("")
    assert [t.item_id for t in ctx.turns] == ["i0", "i1b", "i2"]
    assert ctx.find("i2").text == "typed answer" and ctx.find("i1") is None


def test_system_items_join_the_system_prompt() -> None:
    ctx = Context("Be brief.")
    ctx.add_message("user", "hello", "u1")
    ctx.add_message("system", "Speak French.", "s1")
    ctx.add_message("assistant", "Bonjour.", "a1")
    msgs = ctx.messages()
    assert [(m.role, m.content) for m in msgs] == [
        ("system", "Be brief.\n\nSpeak French."), ("user", "hello"), ("assistant", "Bonjour.")]
    ctx.delete("s1")
    assert ctx.messages()[0].content == "Be brief."
    assert Context("").messages() == []


# -- client events -------------------------------------------------------------------------------

def parse(event: dict) -> p.ClientEvent:
    return p.parse_client_event(json.dumps(event), 10_000)


def test_item_events_parse() -> None:
    ev = parse({"type": "conversation.item.create", "previous_item_id": "x", "item": text_item("user", "hi")})
    assert isinstance(ev, p.ConversationItemCreate) and ev.previous_item_id == "x"
    assert ev.item.message_text() == "hi"
    several = parse({"type": "conversation.item.create", "item": {"type": "message", "role": "assistant", "content": [
        {"type": "output_text", "text": "One."}, {"type": "output_audio", "transcript": "Two."}]}})
    assert several.item.message_text() == "One. Two."
    assert parse({"type": "conversation.item.delete", "item_id": "i"}).item_id == "i"
    assert parse({"type": "output_audio_buffer.clear"}).type == "output_audio_buffer.clear"


@pytest.mark.parametrize("item, code, param", [
    ({"type": "function_call_output", "call_id": "c", "output": "{}"}, "unsupported_item_type", "item.type"),
    ({"type": "message", "content": [{"type": "input_text", "text": "x"}]}, "missing_field", "item.role"),
    ({"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": "AAAA"}]},
     "unsupported_content_type", "item.content.0.type"),
    ({"type": "message", "role": "user", "content": [{"type": "input_image", "image_url": "x"}]},
     "unsupported_content_type", "item.content.0.type"),
    ({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "  "}]},
     "invalid_value", "item.content"),
])
def test_items_we_cannot_hold_are_refused(item: dict, code: str, param: str) -> None:
    with pytest.raises(p.ProtocolError) as exc:
        parse({"type": "conversation.item.create", "item": item}).item.message_text()
    assert (exc.value.code, exc.value.param) == (code, param)


@pytest.mark.parametrize("event, code, param", [
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "tool", "content": []}},
     "invalid_value", "item.role"),
    ({"type": "conversation.item.create"}, "missing_field", "item"),
    ({"type": "conversation.item.delete"}, "missing_field", "item_id"),
])
def test_malformed_item_events(event: dict, code: str, param: str) -> None:
    with pytest.raises(p.ProtocolError) as exc:
        parse(event)
    assert (exc.value.code, exc.value.param) == (code, param)


# -- a session ---------------------------------------------------------------------------------------

async def test_created_items_answer_like_the_sdk_and_reach_the_llm() -> None:
    async with running_server() as server, ws_client(server) as c:
        llm = server_context(server).stages["llm"]
        await c.send({"type": "conversation.item.create", "event_id": "c1",
                      "item": text_item("system", "Answer in one word.")})
        sys_added = await c.next("conversation.item.added")
        await c.next("conversation.item.done")
        await c.send({"type": "conversation.item.create", "item": text_item("user", "What colour is the sky?")})
        added = await c.next("conversation.item.added")
        done = await c.next("conversation.item.done")
        for event in (sys_added, added, done):
            assert SDK_EVENT.validate_python(event).type == event["type"]
        assert added["item"] == done["item"]
        assert added["item"]["role"] == "user" and added["item"]["status"] == "completed"
        assert added["item"]["content"] == [{"type": "input_text", "text": "What colour is the sky?"}]
        assert added["previous_item_id"] == sys_added["item"]["id"]
        await c.send({"type": "response.create"})
        response = await c.next("response.done")
        assert response["response"]["status"] == "completed"
        said = response["response"]["output"][0]["content"][0]["transcript"]
        assert said == "You said: What colour is the sky?."
        prompt = llm.streams[-1].messages
        assert prompt[0].role == "system" and prompt[0].content.endswith("Answer in one word.")
        assert (prompt[-1].role, prompt[-1].content) == ("user", "What colour is the sky?")

        # an assistant item, placed first with previous_item_id "root", and one with its own id
        await c.send({"type": "conversation.item.create", "previous_item_id": "root",
                      "item": text_item("assistant", "Hello, how can I help?", id="item_greeting")})
        first = await c.next("conversation.item.added")
        assert first["item"]["id"] == "item_greeting" and first["previous_item_id"] is None
        assert first["item"]["content"] == [{"type": "output_text", "text": "Hello, how can I help?"}]
        await c.send({"type": "conversation.item.create", "item": text_item("user", "Is grass green?")})
        await c.next("conversation.item.added")
        await c.send({"type": "response.create"})
        assert (await c.next("response.done"))["response"]["output"][0]["content"][0]["transcript"] == \
            "You said: Is grass green?."
        roles = [(m.role, m.content) for m in llm.streams[-1].messages[1:]]
        assert roles[0] == ("assistant", "Hello, how can I help?")
        assert roles[1] == ("user", "What colour is the sky?")


async def test_deleted_items_leave_the_history() -> None:
    async with running_server() as server, ws_client(server) as c:
        llm = server_context(server).stages["llm"]
        await c.send_audio(utterance())  # an item from audio, then a reply
        heard = await c.next("conversation.item.input_audio_transcription.completed")
        assert (await c.next("conversation.item.added"))["item"]["id"] == heard["item_id"]
        reply = await c.next("response.done")
        await c.send({"type": "conversation.item.create", "item": text_item("user", "Forget me.")})
        typed = await c.next("conversation.item.added")
        assert typed["previous_item_id"] == reply["response"]["output"][0]["id"]  # after the reply
        for item_id in (typed["item"]["id"], heard["item_id"]):
            await c.send({"type": "conversation.item.delete", "item_id": item_id})
            deleted = await c.next("conversation.item.deleted")
            assert deleted["item_id"] == item_id and SDK_EVENT.validate_python(deleted)
        await c.send({"type": "conversation.item.delete", "item_id": heard["item_id"], "event_id": "d2"})
        err = (await c.next("error"))["error"]
        assert (err["code"], err["param"], err["event_id"]) == ("item_delete_invalid_item_id", "item_id", "d2")
        await c.send({"type": "response.create"})
        await c.next("response.done", timeout=30)
        contents = [m.content for m in llm.streams[-1].messages]
        assert "Forget me." not in contents and heard["transcript"] not in contents
        assert any(m.startswith("You said:") for m in contents)  # the assistant turn stayed


async def test_item_errors_leave_the_session_working() -> None:
    async with running_server() as server, ws_client(server) as c:
        await c.send({"type": "conversation.item.create", "previous_item_id": "nope", "event_id": "e1",
                      "item": text_item("user", "x")})
        err = (await c.next("error"))["error"]
        assert (err["code"], err["param"], err["event_id"]) == ("previous_item_not_found", "previous_item_id", "e1")
        await c.send({"type": "conversation.item.create", "item": text_item("user", "a", id="dup")})
        await c.next("conversation.item.added")
        await c.send({"type": "conversation.item.create", "item": text_item("user", "b", id="dup")})
        assert (await c.next("error"))["error"]["code"] == "item_already_exists"
        await c.send({"type": "conversation.item.create", "item": {"type": "mcp_call", "name": "f"}})
        assert (await c.next("error"))["error"]["code"] == "unsupported_item_type"
        await c.send({"type": "conversation.item.create", "item": {"type": "function_call", "name": "f"}})
        assert (await c.next("error"))["error"]["code"] == "missing_field"  # no call_id
        await c.send({"type": "conversation.item.create",
                      "item": {"type": "function_call_output", "call_id": "nope", "output": "1"}})
        err = (await c.next("error"))["error"]
        assert (err["code"], err["param"]) == ("invalid_value", "item.call_id")  # no such call
        await c.send({"type": "output_audio_buffer.clear"})  # WebRTC only
        assert (await c.next("error"))["error"]["code"] == "unsupported_event"
        turns = next(iter(server_context(server).sessions)).context.turns
        assert [t.text for t in turns] == ["a"]
        await c.send({"type": "response.create"})
        assert (await c.next("response.done"))["response"]["status"] == "completed"


async def test_the_openai_sdk_creates_and_deletes_items() -> None:
    """Through the SDK's own helpers (conversation.item.create/delete) and its event parsing."""
    from openai import AsyncOpenAI

    from tests.test_openai_sdk import receive_until

    async with running_server() as server:
        client = AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk-test")
        async with client.realtime.connect(model="step-realtime") as conn:
            seen: list = []
            await receive_until(conn, "session.created", seen)
            await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                      "content": [{"type": "input_text", "text": "Typed hello"}]})
            added = await receive_until(conn, "conversation.item.added", seen)
            assert added.item.role == "user" and added.item.content[0].text == "Typed hello"
            await receive_until(conn, "conversation.item.done", seen)
            await conn.response.create()
            done = await receive_until(conn, "response.done", seen)
            assert done.response.output[0].content[0].transcript == "You said: Typed hello."
            await conn.conversation.item.delete(item_id=added.item.id)
            deleted = await receive_until(conn, "conversation.item.deleted", seen)
            assert deleted.item_id == added.item.id
