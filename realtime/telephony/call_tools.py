"""Hang-up and transfer as tools the model can call on a phone call (`server.carriers.model_tools`).

They join the server's own tools (tools/, the config's `tools:`) for that call only. Like every
tool they run only for a committed turn (controller/tools.py: never speculative). The model says
its goodbye or "let me put you through" in the reply that follows the tool's result; the carrier
request goes out once that reply has played (control.py waits for it), so the caller hears it.
"""
from __future__ import annotations

import asyncio
import logging

from realtime.telephony import control

log = logging.getLogger(__name__)

END_CALL = {"type": "function", "name": "end_call",
            "description": "End the phone call, after saying goodbye. Use it when the caller is done.",
            "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}
TRANSFER_CALL = {"type": "function", "name": "transfer_call",
                 "description": "Transfer the caller to a person: a phone number (+E.164) or SIP address. "
                                "warm: the person first hears a short summary of the call.",
                 "parameters": {"type": "object", "properties": {
                     "to": {"type": "string", "description": "+E.164 number or sip: address"},
                     "mode": {"type": "string", "enum": ["cold", "warm"]},
                     "summary": {"type": "string", "description": "for a warm transfer: the call so far"}},
                     "required": ["to"], "additionalProperties": False}}
TIMEOUT_S = 5.0


class CallTools:
    """A ToolRunner (controller.ports) for one call: end_call, transfer_call, then `others`."""

    def __init__(self, call, others=None) -> None:
        self.call = call
        self.others = others
        self.tasks: set[asyncio.Task] = set()

    def specs(self) -> list[dict]:
        return [END_CALL, TRANSFER_CALL, *(self.others.specs() if self.others is not None else [])]

    def has(self, name: str) -> bool:
        return name in ("end_call", "transfer_call") or (self.others is not None and self.others.has(name))

    def timeout_s(self, name: str) -> float:
        return TIMEOUT_S if name in ("end_call", "transfer_call") else self.others.timeout_s(name)

    async def run(self, name: str, arguments: dict) -> str:
        if name == "end_call":
            self._after_the_reply(control.hang_up(self.call), "hang-up")
            return "The call ends after your goodbye: say it now, briefly."
        if name == "transfer_call":
            to, mode = arguments.get("to"), arguments.get("mode", "cold")
            if not isinstance(to, str) or not to.strip() or mode not in ("cold", "warm"):
                raise ValueError("transfer_call needs 'to' (a number or SIP address) and mode cold or warm")
            self._after_the_reply(control.transfer(self.call, to, mode, str(arguments.get("summary", ""))),
                                  f"transfer to {to}")
            return f"The caller is transferred to {to} after your next sentence: tell them, briefly."
        return await self.others.run(name, arguments)

    def _after_the_reply(self, action, what: str) -> None:
        """The carrier request waits for the reply that follows this result to play (control.py)."""
        async def run() -> None:
            try:
                await action
            except control.ControlError as exc:
                log.warning("session %s: %s failed: %s", self.call.session.id, what, exc)
        task = asyncio.create_task(run(), name=f"call-control-{self.call.session.id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
