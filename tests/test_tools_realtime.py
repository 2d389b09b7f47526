"""Function calling over the Realtime API (docs/tools.md), fake stages: the official openai SDK
as the client that runs the tool; the never-speculative rule; barge-in during a server-side
tool; timeouts, failures, unknown tools, bad JSON; Python tools from the config."""
from __future__ import annotations

import asyncio
import json

import pytest

from openai import AsyncOpenAI
from openai.types.realtime.realtime_server_event import RealtimeServerEvent
from pydantic import TypeAdapter

from tests import tool_fixtures
from tests.realtime_util import (
    WAIT, fake_config, running_server, server_context, silence, tone, utterance, wait_until, ws_client,
)
from tests.test_openai_sdk import receive_until

SDK_EVENT = TypeAdapter(RealtimeServerEvent)
WEATHER = {"type": "function", "name": "get_weather", "description": "Today's weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def tool_config(name: str = "get_weather", arguments: dict | str | None = None, **more):
    return fake_config(**{"llm.tool_call": {"name": name, "arguments": arguments or {"city": "Paris"}}, **more})


def fake_llm(server):
    return server_context(server).stages["llm"]


async def test_sdk_client_runs_the_function_and_the_model_speaks_its_result() -> None:
    async with running_server(tool_config()) as server:
        client = AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk-test")
        async with client.realtime.connect(model="step-realtime") as conn:
            seen: list = []
            await receive_until(conn, "session.created", seen)
            await conn.session.update(session={"type": "realtime", "tools": [WEATHER], "tool_choice": "auto"})
            updated = await receive_until(conn, "session.updated", seen)
            assert updated.session.tools[0].name == "get_weather" and updated.session.tool_choice == "auto"
            start = len(seen)
            from tests.realtime_util import append_events
            for event in append_events(utterance(1.0)):
                await conn.input_audio_buffer.append(audio=event["audio"])
            done = await receive_until(conn, "response.done", seen)
            turn = seen[start:]
            types = [e.type for e in turn]
            call = next(o for o in done.response.output if o.type == "function_call")
            assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
            assert done.response.status == "completed"
            added = next(e for e in turn if e.type == "response.output_item.added" and e.item.type == "function_call")
            assert added.item.call_id == call.call_id and added.item.name == "get_weather"
            deltas = [e.delta for e in turn if e.type == "response.function_call_arguments.delta"]
            assert "".join(deltas) == call.arguments and len(deltas) > 1
            args_done = next(e for e in turn if e.type == "response.function_call_arguments.done")
            assert (args_done.call_id, args_done.name, args_done.arguments) == (call.call_id, call.name, call.arguments)
            assert types.index("response.function_call_arguments.done") < types.index("response.done")
            assert "response.output_audio.delta" not in types  # a call is not spoken

            # The SDK's own client answers the call, then asks for the answer.
            await conn.conversation.item.create(item={"type": "function_call_output", "call_id": call.call_id,
                                                      "output": json.dumps({"temperature": 21})})
            await receive_until(conn, "conversation.item.done", seen)
            await conn.response.create()
            final = await receive_until(conn, "response.done", seen)
            assert final.response.output[0].content[0].transcript == 'The tool said: {"temperature": 21}.'
    llm = fake_llm(server)
    first, last = llm.streams[0], llm.streams[-1]
    assert first.tools == [{"type": "function", "function": {k: WEATHER[k] for k in ("name", "description",
                                                                                     "parameters")}}]
    assert first.tool_choice == "auto"
    assistant, tool = last.messages[-2], last.messages[-1]
    assert assistant.role == "assistant" and assistant.tool_calls[0].call_id == call.call_id
    assert tool.role == "tool" and tool.tool_call_id == call.call_id


async def test_events_match_the_sdk_types_and_history_order() -> None:
    async with running_server(tool_config()) as server:
        async with ws_client(server) as c:
            await c.send({"type": "session.update", "session": {"tools": [WEATHER]}})
            session = (await c.next("session.updated"))["session"]
            await c.send_audio(utterance(1.0))
            await c.next("response.done")
            for e in c.events:
                if not e["type"].startswith("step."):
                    SDK_EVENT.validate_python(e)
            assert json.dumps(session["tools"]) == json.dumps([WEATHER])
            turns = server_context(server).sessions.copy().pop().context.turns
            assert [t.role for t in turns] == ["user", "assistant"]  # no empty message before the call
            assert turns[-1].call.name == "get_weather"
            assert c.of_type("step.tool_call")[0]["status"] == "client"


async def test_a_response_that_only_calls_has_no_message_item() -> None:
    """As OpenAI's: the function_call is output item 0; no empty assistant message is announced,
    spoken (no audio events) or kept in the history."""
    async with running_server(tool_config()) as server:
        async with ws_client(server) as c:
            await c.send({"type": "session.update", "session": {"tools": [WEATHER]}})
            await c.next("session.updated")
            await c.send_audio(utterance(1.0))
            done = (await c.next("response.done"))["response"]
            assert [(o["type"], o["name"]) for o in done["output"]] == [("function_call", "get_weather")]
            added = c.of_type("response.output_item.added")
            assert [(e["item"]["type"], e["output_index"]) for e in added] == [("function_call", 0)]
            for kind in ("response.content_part.added", "response.output_audio.delta",
                         "response.output_audio.done", "response.output_audio_transcript.done"):
                assert not c.of_type(kind), kind
            assert c.of_type("response.function_call_arguments.done")[0]["output_index"] == 0
            turns = server_context(server).sessions.copy().pop().context.turns
            assert not [t for t in turns if t.role == "assistant" and t.call is None]


async def test_words_before_a_call_are_a_message_that_comes_first() -> None:
    async with running_server(tool_config(**{"llm.tool_preamble": "Let me check that."})) as server:
        async with ws_client(server) as c:
            await c.send({"type": "session.update", "session": {"tools": [WEATHER]}})
            await c.next("session.updated")
            await c.send_audio(utterance(1.0))
            done = (await c.next("response.done"))["response"]
            assert [o["type"] for o in done["output"]] == ["message", "function_call"]
            assert done["output"][0]["content"][0]["transcript"] == "Let me check that."
            added = c.of_type("response.output_item.added")
            assert [(e["item"]["type"], e["output_index"]) for e in added] == [("message", 0), ("function_call", 1)]
            assert c.of_type("response.output_audio.delta")
            types = [e["type"] for e in c.events]
            assert types.index("response.output_item.added") < types.index("response.output_audio.delta")
            turns = server_context(server).sessions.copy().pop().context.turns
            assert [(t.role, t.text) for t in turns[1:]] == [("assistant", "Let me check that."), ("assistant", "")]


async def test_a_speculation_stops_at_the_tool_call_until_the_turn_ends() -> None:
    """The pause starts a speculation; the user goes on: it reached the call, yet no tool event
    went out and it was discarded. The real end of turn then calls the tool once."""
    config = tool_config(**{"llm.token_delay_s": 0.002, "controller.speculation": True})
    async with running_server(config) as server:
        async with ws_client(server) as c:
            await c.send({"type": "session.update", "session": {"tools": [WEATHER]}})
            await c.next("session.updated")
            llm = fake_llm(server)
            await c.send_audio(tone(0.8))
            await c.send_audio(silence(0.35))  # a pause: a speculation starts, shorter than the end of turn
            await c.next("step.speculation", action="started")
            await wait_until(lambda: llm.streams and llm.streams[0].pieces_sent >= 1, what="speculation at the call")
            await asyncio.sleep(0.2)
            assert not c.of_type("response.output_item.added") and not c.of_type("step.tool_call")
            await c.send_audio(utterance(0.6))  # the user goes on: the speculation is discarded
            await c.next("step.speculation", action="discarded")
            done = await c.next("response.done")
            calls = [o for o in done["response"]["output"] if o["type"] == "function_call"]
            assert len(calls) == 1
            announced = [e for e in c.of_type("response.output_item.added") if e["item"]["type"] == "function_call"]
            assert [e["item"]["call_id"] for e in announced] == [calls[0]["call_id"]]
            assert llm.streams[0].closed_early  # the discarded one never finished its call


async def test_a_committed_speculation_releases_its_call() -> None:
    config = tool_config(**{"controller.speculation": True})
    async with running_server(config) as server:
        async with ws_client(server) as c:
            await c.send({"type": "session.update", "session": {"tools": [WEATHER]}})
            await c.next("session.updated")
            await c.send_audio(utterance(1.0))
            await c.next("step.speculation", action="committed")
            done = await c.next("response.done")
            assert [o["type"] for o in done["response"]["output"]] == ["function_call"]


def server_tools(*entries: dict, **more):
    return tool_config(**{"tools": list(entries), **more})


async def test_python_tool_from_the_config_is_run_and_spoken() -> None:
    tool_fixtures.CALLS.clear()
    config = server_tools({"type": "python", "function": "tests.tool_fixtures:get_weather"})
    async with running_server(config) as server:
        async with ws_client(server) as c:
            session = server_context(server).tool_runner.specs()[0]
            assert session["description"] == "Today's weather in a city."
            assert session["parameters"]["required"] == ["city"]
            await c.send_audio(utterance(1.0))
            first = await c.next("response.done")
            assert first["response"]["output"][0]["type"] == "function_call"
            output = await c.next("conversation.item.added")
            while output["item"]["type"] != "function_call_output":
                output = await c.next("conversation.item.added")
            assert json.loads(output["item"]["output"]) == {"city": "Paris", "temperature": 21, "unit": "celsius"}
            second = await c.next("response.done")
            spoken = second["response"]["output"][0]["content"][0]["transcript"]
            assert spoken.startswith("The tool said:") and "21" in spoken
            assert [s["status"] for s in c.of_type("step.tool_call")] == ["running", "completed"]
    assert tool_fixtures.CALLS == [("get_weather", {"city": "Paris", "unit": "celsius"})]


async def test_timeout_and_failure_become_error_results() -> None:
    for function, status, words in (("never_returns", "timeout", "timed out"),
                                    ("broken", "failed", "the backend is down")):
        config = server_tools({"type": "python", "function": f"tests.tool_fixtures:{function}", "timeout_s": 0.3},
                              **{"llm.tool_call": {"name": function, "arguments": {}}})
        async with running_server(config) as server:
            async with ws_client(server) as c:
                await c.send_audio(utterance(1.0))
                await c.next("response.done")
                second = await c.next("response.done")
                assert words in second["response"]["output"][0]["content"][0]["transcript"]
                assert c.of_type("step.tool_call")[-1]["status"] == status


async def test_unknown_tool_and_bad_json_get_an_error_and_the_session_goes_on() -> None:
    cases = (("no_such_tool", {"city": "Paris"}, "unknown tool"), ("get_weather", '{"city": "Par', "not valid JSON"))
    for name, arguments, words in cases:
        async with running_server(tool_config(name, arguments)) as server:
            async with ws_client(server) as c:
                await c.send({"type": "session.update", "session": {"tools": [WEATHER]}})
                await c.next("session.updated")
                await c.send_audio(utterance(1.0))
                await c.next("response.done")
                error = await c.next("error")
                assert error["error"]["code"] == "invalid_tool_call" and words in error["error"]["message"]
                second = await c.next("response.done")  # the model hears the error and answers
                assert words in second["response"]["output"][0]["content"][0]["transcript"]
                await c.send_audio(utterance(1.0))  # the session goes on
                assert (await c.next("response.done"))["response"]["status"] == "completed"


async def test_barge_in_during_a_server_tool_cancels_the_answer_not_the_side_effect() -> None:
    tool_fixtures.CALLS.clear()
    tool_fixtures.STARTED.clear()
    config = server_tools({"type": "python", "function": "tests.tool_fixtures:slow_side_effect"},
                          **{"llm.tool_call": {"name": "slow_side_effect", "arguments": {"seconds": 1.0}}})
    async with running_server(config) as server:
        async with ws_client(server) as c:
            await c.send_audio(utterance(1.0))
            await c.next("response.done")
            await asyncio.get_running_loop().run_in_executor(None, tool_fixtures.STARTED.wait, WAIT)
            await c.send_audio(tone(0.6))  # the caller talks while the tool runs
            interrupted = await c.next("step.tool_call", status="interrupted")
            assert "runs on" in interrupted["detail"]
            await c.next("step.tool_call", status="completed")
            await c.send({"type": "session.update", "session": {"tool_choice": "none"}})  # a spoken answer now
            await c.next("session.updated")
            await c.send_audio(silence(1.2))  # their turn ends: it is answered, with the result in view
            done = await c.next("response.done")
            assert done["response"]["output"][0]["content"][0]["transcript"].startswith("You said")
            turns = server_context(server).sessions.copy().pop().context.turns
            assert any(t.role == "tool" and t.text == "booked" for t in turns)
            # no follow-up answer for the tool's result was ever created
            assert len(c.of_type("response.created")) == 2
    assert tool_fixtures.CALLS == [("slow_side_effect", {"seconds": 1.0})]


async def test_response_create_overrides_tools_for_one_response_and_bad_tools_are_refused() -> None:
    async with running_server(tool_config()) as server:
        async with ws_client(server) as c:
            await c.send({"type": "session.update", "session": {"tools": [WEATHER], "audio": {"input": {
                "turn_detection": None}}}})
            await c.next("session.updated")
            for bad, param in (({"tools": [{"type": "mcp", "server_label": "x"}]}, "session.tools.0.type"),
                               ({"tool_choice": "sometimes"}, "session.tool_choice"),
                               ({"tools": [WEATHER, WEATHER]}, "session.tools")):
                await c.send({"type": "session.update", "session": bad})
                assert (await c.next("error"))["error"]["param"] == param
            await c.send({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": "weather?"}]}})
            await c.send({"type": "response.create", "response": {"tool_choice": "none"}})
            done = await c.next("response.done")
            assert [o["type"] for o in done["response"]["output"]] == ["message"]  # no tools offered
            await c.send({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": "and now?"}]}})
            await c.send({"type": "response.create"})  # the session's tools again
            done = await c.next("response.done")
            assert [o["type"] for o in done["response"]["output"]] == ["function_call"]
    llm = fake_llm(server)
    assert [bool(s.tools) for s in llm.streams] == [False, True]


async def test_a_discarded_speculation_runs_no_server_tool() -> None:
    tool_fixtures.CALLS.clear()
    config = server_tools({"type": "python", "function": "tests.tool_fixtures:get_weather"},
                          **{"llm.token_delay_s": 0.002, "controller.speculation": True})
    async with running_server(config) as server:
        async with ws_client(server) as c:
            llm = fake_llm(server)
            await c.send_audio(tone(0.8))
            await c.send_audio(silence(0.35))
            await c.next("step.speculation", action="started")
            await wait_until(lambda: llm.streams and llm.streams[0].pieces_sent >= 1, what="speculation at the call")
            await asyncio.sleep(0.3)
            assert tool_fixtures.CALLS == [] and not c.of_type("step.tool_call")
            await c.send_audio(utterance(0.6))
            await c.next("step.speculation", action="discarded")
            await c.next("response.done")
            await c.next("response.done")  # the follow-up with the result
    assert tool_fixtures.CALLS == [("get_weather", {"city": "Paris", "unit": "celsius"})]


@pytest.mark.parametrize("take_back", [False, True])
async def test_speech_while_a_call_streams_leaves_it_incomplete_and_unrun(take_back: bool) -> None:
    """Barge-in, or (nothing was heard yet) the turn taken back: either way the call is cut."""
    config = tool_config(arguments={"city": "Paris", "note": "x" * 40}, **{"llm.token_delay_s": 0.25,
                                                                            "controller.take_back_turns": take_back})
    async with running_server(config) as server:
        async with ws_client(server) as c:
            await c.send({"type": "session.update", "session": {"tools": [WEATHER]}})
            await c.next("session.updated")
            await c.send_audio(utterance(1.0))
            await c.next("response.function_call_arguments.delta")
            await c.send_audio(tone(0.6))  # the caller speaks over the call
            done = await c.next("response.done")
            assert done["response"]["status"] == "cancelled"
            call = done["response"]["output"][0]
            assert call["type"] == "function_call" and call["status"] == "incomplete"
            assert not c.of_type("response.function_call_arguments.done") and not c.of_type("step.tool_call")
            turns = server_context(server).sessions.copy().pop().context.turns
            assert not any(t.call is not None for t in turns)
