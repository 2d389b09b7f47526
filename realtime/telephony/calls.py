"""What every phone call shares, whatever the carrier: one call is one Realtime session.

A carrier module (twilio.py, telnyx.py, vonage.py, audiosocket.py) only translates its wire format:
caller audio → `hear()`, keypresses → `dtmf()`, our audio → its messages (through an
AudioOutput). The session, its controller, echo canceller and admission place are the same code as
every other transport. Bad input raises CallError: that call ends with the reason, no other does.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from pydantic import BaseModel, ValidationError

from controller.ports import AudioOutput
from realtime.admission import serve_admitted
from realtime.audio import PcmInput
from realtime.protocol import LANGUAGE_PATTERN, error_event
from realtime.session import RealtimeSession, ServerContext
from realtime.telephony.call_tools import CallTools
from realtime.telephony.control import CALLS
from realtime.telephony.recording import CallRecorder, ReferenceTee
from realtime.ws import SERVER_KEY, SOCKETS_KEY

log = logging.getLogger(__name__)
DTMF_KEYS = frozenset("0123456789*#ABCD")
MAX_PARAMETERS_CHARS = 2000  # carrier-supplied call context added to the instructions, at most
LANGUAGE_CODE = re.compile(LANGUAGE_PATTERN)


class CallError(Exception):
    """Input that ends the call: closed with this code and reason."""

    def __init__(self, reason: str, code: int = WSCloseCode.UNSUPPORTED_DATA) -> None:
        super().__init__(reason)
        self.code = code


def parse_field(data: dict, key: str, model: type[BaseModel]) -> Any:
    """`data[key]` as `model` (a carrier's JSON message part), or a CallError naming the field."""
    try:
        return model.model_validate(data.get(key))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in (key, *err["loc"]))
        raise CallError(f"{data.get('event')}: {where}: {err['msg']}") from None


class PhoneCall:
    """One call's session and the carrier messages waiting to be sent (`outbox`)."""

    def __init__(self, server: ServerContext, output: AudioOutput, source: PcmInput, reservation=None) -> None:
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()
        self.output = output
        carriers = server.config.server.carriers
        tools = CallTools(self, server.tool_runner) if carriers is not None and carriers.model_tools else None
        self.session = RealtimeSession(server, "telephony", lambda s: self.output, reservation, tools)
        self.session.set_input(source)
        self.session.closer = self.end  # limits end a call from our side too
        self.call_id: str | None = None
        self.recorder: CallRecorder | None = None
        CALLS[self.session.id] = self  # for call control (control.py)
        rec = server.config.server.recordings
        if rec is not None:
            name = f"{time.strftime('%Y%m%dT%H%M%S')}-{self.session.id}"
            self.recorder = CallRecorder(rec.dir, rec.max_mb, name, source.rate, server.clock)
            self.output.echo = ReferenceTee(self.session.echo, self.recorder)
        self.parameters: dict[str, str] = {}  # the carrier's call context

    def hear(self, pcm) -> None:
        """The caller's audio (int16 at the input's rate) → the recording and the session."""
        if self.recorder is not None:
            self.recorder.caller(pcm, self.session.input.rate)
        self.session.push_frames(self.session.input.frames(pcm))

    async def finish(self) -> None:
        """The call is over: its recording and transcript are written (errors only logged)."""
        if self.recorder is None:
            return
        while not self.session.outbox.empty():  # what the event task had not read yet
            self.recorder.event(json.loads(self.session.outbox.get_nowait()))
        info = {"session_id": self.session.id, "call_id": self.call_id, "parameters": self.parameters}
        try:
            await asyncio.to_thread(self.recorder.write, info)
            log.info("session %s: recorded to %s.wav", self.session.id, self.recorder.path)
        except OSError as exc:
            log.error("session %s: the recording could not be written: %s", self.session.id, exc)

    def dtmf(self, digit: str) -> None:
        """A keypress: the Realtime event and a note in the model's context (not a barge-in)."""
        digit = digit.upper() if isinstance(digit, str) else digit
        if not isinstance(digit, str) or digit not in DTMF_KEYS:
            raise CallError(f"dtmf: {digit!r} is not a keypad key (0-9, *, #, A-D)")
        self.session.dtmf(digit)

    def add_parameters(self, params: dict[str, Any]) -> None:
        """Carrier call context (Twilio customParameters, Vonage headers…) → the instructions, so
        the model knows e.g. who is calling. Bounded: it is the caller's side that sets them."""
        if not isinstance(params, dict) or not params:
            return
        lines = "\n".join(f"- {k}: {v}" for k, v in params.items() if isinstance(k, str))[:MAX_PARAMETERS_CHARS]
        self.parameters = {str(k): str(v)[:512] for k, v in list(params.items())[:16]}
        instructions = f"{self.session.settings.instructions}\n\nAbout this phone call:\n{lines}"
        self.session.settings.instructions = self.session.context.system_prompt = instructions
        if "language" in params:
            self.set_language(params["language"])

    def set_language(self, language: Any) -> None:
        """The `language` call parameter: the caller's language for transcription, as a Realtime
        client's transcription.language (one phone number per language: TwiML
        `<Parameter name="language" value="zh"/>`). A wrong one is an `error` event (logged, kept
        in the recording) and the call goes on detecting the language of each turn."""
        try:
            if not isinstance(language, str) or not LANGUAGE_CODE.fullmatch(language):
                raise ValueError(f"{language!r} is not a lower-case ISO-639 code such as 'en' or 'zh'")
            self.session.controller.set_input_language(language)
        except ValueError as exc:
            self.session.send(error_event("invalid_request_error", "invalid_value", f"call parameter language: {exc}",
                                          "language"))
            return
        self.session.settings.transcription = {**(self.session.settings.transcription or {}), "language": language}

    async def end(self, reason: str) -> None:
        """End the call from our side (call control: hang up, transferred)."""
        raise NotImplementedError

    async def discard_events(self) -> None:
        """The Realtime JSON events have no reader on a phone line; errors are worth a log line."""
        while True:
            event = json.loads(await self.session.outbox.get())
            if self.recorder is not None:
                self.recorder.event(event)
            if event["type"] == "error":
                log.warning("session %s: %s", self.session.id, event["error"].get("message"))


class WebSocketCall(PhoneCall):
    """A call carried over a WebSocket (Twilio, Telnyx, Vonage): the carrier's messages in through
    handle(), ours out of `outbox` (dicts as JSON text, bytes as binary frames)."""

    def __init__(self, server: ServerContext, ws: web.WebSocketResponse, output: AudioOutput,
                 source: PcmInput, reservation=None) -> None:
        super().__init__(server, output, source, reservation)
        self.ws = ws
        self.max_bytes = server.config.server.max_event_bytes

    def handle(self, msg) -> bool:
        """One WebSocket message; False when the call is over. Raises CallError for bad input."""
        if msg.type == WSMsgType.TEXT:
            if len(msg.data) > self.max_bytes:
                raise CallError(f"message is over {self.max_bytes} bytes", WSCloseCode.MESSAGE_TOO_BIG)
            return self.on_json(parse_json(msg.data))
        if msg.type == WSMsgType.BINARY:
            return self.on_binary(msg.data)
        return msg.type not in (WSMsgType.ERROR, WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)

    def on_json(self, data: dict) -> bool:
        raise NotImplementedError

    async def end(self, reason: str) -> None:
        await self.ws.close(code=WSCloseCode.OK, message=close_reason(reason))

    def on_binary(self, data: bytes) -> bool:
        raise CallError("binary frames are not part of this protocol; send JSON text")

    def start_tasks(self) -> list[asyncio.Task]:
        """The call's own tasks, cancelled when it ends."""
        return [asyncio.create_task(self.send_loop(), name=f"step-tel-send-{self.session.id}"),
                asyncio.create_task(self.discard_events(), name=f"step-tel-events-{self.session.id}")]

    async def send_loop(self) -> None:
        try:
            while True:
                out = await self.outbox.get()
                if isinstance(out, bytes):
                    await self.ws.send_bytes(out)
                else:
                    await self.ws.send_str(json.dumps(out))
        except (ConnectionError, RuntimeError):
            log.debug("session %s: send failed, caller gone", self.session.id)


def parse_json(raw: str, key: str = "event") -> dict:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise CallError("message is not valid JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get(key), str):
        raise CallError(f"message must be a JSON object with an '{key}'")
    return data


def websocket_route(make_call: Callable[[ServerContext, web.WebSocketResponse, Any], WebSocketCall], name: str):
    """An aiohttp handler for a WebSocket carrier: admission (503 before the upgrade), then one call."""
    async def handler(request: web.Request) -> web.StreamResponse:
        server = request.app[SERVER_KEY]
        return await serve_admitted(server.admission,
                                    lambda reservation: _serve(request, server, reservation, make_call, name))
    return handler


async def _serve(request: web.Request, server, reservation, make_call, name: str) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=4 * server.config.server.max_event_bytes + 65_536, heartbeat=30)
    await ws.prepare(request)
    request.app[SOCKETS_KEY].add(ws)
    call = make_call(server, ws, reservation)
    log.info("session %s: %s call from %s", call.session.id, name, request.remote)
    tasks = call.start_tasks()
    close_code, reason = WSCloseCode.OK, "call ended"
    try:
        async for msg in ws:
            if not call.handle(msg):
                break
    except CallError as exc:
        close_code, reason = exc.code, str(exc)
        log.warning("session %s: closing the call: %s", call.session.id, reason)
    except Exception:  # a bug ends this call only
        log.exception("session %s: handling a %s message failed", call.session.id, name)
        close_code, reason = WSCloseCode.INTERNAL_ERROR, "server error"
    finally:
        await end_call(call, tasks)
        if not ws.closed:
            await ws.close(code=close_code, message=close_reason(reason))
        log.info("session %s: closed", call.session.id)
    return ws


async def end_call(call: PhoneCall, tasks: list[asyncio.Task]) -> None:
    await call.session.close()
    for task in tasks:  # after the hangup or a bad message nothing more is worth sending
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await call.finish()


def close_reason(reason: str) -> bytes:
    """A WebSocket close reason is at most 123 bytes: cut on a character boundary."""
    return reason.encode()[:120].decode("utf-8", "ignore").encode()
