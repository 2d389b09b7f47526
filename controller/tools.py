"""Function calling: which tools a reply is offered, and what happens to the calls it makes.

A mixin of controller.controller.Controller. A reply's function calls join the history once the
reply is done (never for a cancelled one: its calls are "incomplete" and nothing runs). Then:

* a call of an unknown tool, or with arguments that are not a JSON object, is answered by the
  server with an error result (and an `error` event), so the model can try again;
* a call of a server-side tool (tools/, from the config) runs here, with its timeout; an error
  or a timeout becomes the result;
* any other call is the client's: it answers with a function_call_output item and response.create.

When every call was answered here, a follow-up reply speaks the result. The caller speaking
while a server tool runs cancels that follow-up, not the tool: a started side effect is not
undone; its result still joins the history (step.tool_call "interrupted", then its end).
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace

from controller.events import ErrorEvent, FunctionCallItem, FunctionOutputAdded, ToolStatus, new_id
from controller.ports import ToolRunner
from controller.states import State
from llm.base import ToolCall

log = logging.getLogger(__name__)


class ToolCalls:
    client_tools: list[dict]  # Realtime function tools from session.update
    tool_choice: str | dict
    tool_runner: ToolRunner | None

    def _init_tools(self, runner: ToolRunner | None) -> None:
        self.client_tools = []
        self.tool_choice = "auto"
        self.tool_runner = runner
        self._tool_rounds = 0
        self._next_tools: tuple[list[dict], str | dict] | None = None  # response.create's override, once
        self._tool_task: asyncio.Task | None = None
        self._running_calls: list[FunctionCallItem] = []
        self._tool_tasks: set[asyncio.Task] = set()  # kept referenced until done, interrupted or not

    def _tool_names(self) -> set[str]:
        server = [t["name"] for t in self.tool_runner.specs()] if self.tool_runner is not None else []
        return {t["name"] for t in self.client_tools} | set(server)

    def offered_tools(self) -> tuple[list[dict], str | dict | None]:
        """The tools in chat-completions form and the tool choice, for the next reply."""
        client_tools, choice = self._next_tools or (self.client_tools, self.tool_choice)
        self._next_tools = None
        if self._tool_rounds >= self.cfg.max_tool_rounds or choice == "none":
            return [], None
        realtime = client_tools + (self.tool_runner.specs() if self.tool_runner is not None else [])
        tools = [{"type": "function", "function": {k: t[k] for k in ("name", "description", "parameters") if t.get(k)}}
                 for t in realtime]
        if isinstance(choice, dict):  # Realtime {type: function, name} → chat {type, function: {name}}
            choice = {"type": "function", "function": {"name": choice.get("name")}}
        return tools, choice

    def override_tools(self, tools: list[dict] | None, tool_choice: str | dict | None) -> None:
        """response.create's `tools` / `tool_choice`: for the next response only."""
        if tools is not None or tool_choice is not None:
            self._next_tools = (self.client_tools if tools is None else tools,
                                self.tool_choice if tool_choice is None else tool_choice)

    def _finished_calls(self, reply, completed: bool) -> tuple[FunctionCallItem, ...]:
        """The reply's calls as output items; those of a completed reply join the history."""
        if not completed or not reply.calls_done:
            return tuple(replace(c, status="incomplete") for c in reply.calls)
        for call in reply.calls:
            self.context.add_function_call(ToolCall(call.call_id, call.name, call.arguments), call.item_id)
        return tuple(reply.calls)

    def _call_problem(self, call: FunctionCallItem) -> str:
        if call.name not in self._tool_names():
            return f"unknown tool {call.name!r}; the tools are: {', '.join(sorted(self._tool_names())) or 'none'}"
        try:
            args = json.loads(call.arguments or "{}")
        except ValueError as exc:
            return f"the arguments of {call.name} are not valid JSON: {exc}"
        return "" if isinstance(args, dict) else f"the arguments of {call.name} are not a JSON object"

    def _answer_calls(self, calls: tuple[FunctionCallItem, ...]) -> bool:
        """After a completed reply: answer what the server can. True if a follow-up will come."""
        if not calls:
            return False
        ours, clients = [], []
        for call in calls:
            if problem := self._call_problem(call):
                self.emit(ErrorEvent("invalid_tool_call", problem))
                self.emit(ToolStatus(call.call_id, call.name, "invalid", problem))
                self._add_output(call.call_id, json.dumps({"error": problem}))
            elif self.tool_runner is not None and self.tool_runner.has(call.name):
                ours.append(call)
            else:
                clients.append(call)
                self.emit(ToolStatus(call.call_id, call.name, "client"))
        if clients:  # the client answers (function_call_output, response.create)
            return False
        self._tool_rounds += 1
        self._may_take_back = False  # the call was made: speech now interrupts, it does not resume the turn
        self._running_calls = ours
        self._tool_task = task = asyncio.create_task(self._run_server_tools(ours))
        self._tool_tasks.add(task)
        task.add_done_callback(self._tool_tasks.discard)
        return True

    async def _run_server_tools(self, calls: list[FunctionCallItem]) -> None:
        outputs = await asyncio.gather(*(self._run_tool(call) for call in calls))
        for call, output in zip(calls, outputs):
            self._add_output(call.call_id, output)
        if self._tool_task is not asyncio.current_task() or self._closed:
            return  # the caller spoke meanwhile: the results are in the history, no follow-up
        self._tool_task = None
        self._running_calls = []
        if self.state is State.BOT_REPLYING and self._reply is None:
            self._play(self._new_reply(_ready(None), in_context=True), speculative=False)

    async def _run_tool(self, call: FunctionCallItem) -> str:
        assert self.tool_runner is not None
        timeout = self.tool_runner.timeout_s(call.name)
        self.emit(ToolStatus(call.call_id, call.name, "running"))
        try:
            output = await asyncio.wait_for(self.tool_runner.run(call.name, json.loads(call.arguments or "{}")),
                                            timeout)
        except asyncio.TimeoutError:
            detail = f"{call.name} timed out after {timeout:g} s"
            self.emit(ToolStatus(call.call_id, call.name, "timeout", detail))
            return json.dumps({"error": detail})
        except Exception as exc:  # the model hears the failure; the session goes on
            log.warning("tool %s failed: %r", call.name, exc)
            detail = f"{call.name} failed: {type(exc).__name__}: {exc}"
            self.emit(ToolStatus(call.call_id, call.name, "failed", detail))
            return json.dumps({"error": detail})
        self.emit(ToolStatus(call.call_id, call.name, "completed"))
        return output

    def _add_output(self, call_id: str, output: str) -> None:
        previous = self.context.turns[-1].item_id if self.context.turns else None
        item_id = new_id("item")
        self.context.add_function_output(call_id, output, item_id)
        self.emit(FunctionOutputAdded(item_id, call_id, output, previous))

    def _interrupt_tools(self, why: str) -> None:
        """The caller spoke (or the client cancelled) while server tools ran: no follow-up."""
        if self._tool_task is None or self._tool_task.done():
            return
        for call in self._running_calls:
            self.emit(ToolStatus(call.call_id, call.name, "interrupted",
                                 f"{why}: the tool runs on, its result joins the history, no answer follows"))
        self._tool_task = None
        self._running_calls = []

    def _cancel_tools(self) -> None:
        """The session closes: stop waiting for tools (a function already running in a thread
        finishes on its own)."""
        for task in list(self._tool_tasks):
            task.cancel()
        self._tool_task = None


async def _ready(value):
    return value
