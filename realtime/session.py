"""One Realtime session: a Controller with its own VAD, tokenizer and context, fed by a transport.

The transport (realtime/ws.py, realtime/webrtc.py, realtime/telephony/) hands in client JSON
(handle_text) and/or audio frames (push_frames); it takes server JSON out of `outbox` and sends it.
Client mistakes become `error` events; the session carries on. On WebRTC the output is wrapped to
report output_audio_buffer.* events (realtime/output_buffer.py). The session's echo canceller
(realtime/echo.py) sits between its output (the reference) and its input (the audio cleaned).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from context.history import Context
from controller import events as ev
from controller.controller import Controller, Stages
from controller.failures import describe_failure
from controller.metrics import SpeculationStats
from controller.ports import AudioOutput
from controller.states import State
from core import memory
from core.load import LoadMonitor
from core.scheduler import Scheduler
from realtime import protocol as p
from realtime.admission import Admission, Reservation
from realtime.audio import AudioFormatError, PcmInput, input_for
from realtime.config import Config
from realtime.echo import EchoCanceller, aec_rate
from realtime.events_out import EventRenderer
from realtime.limits import Lifetime, bound_input, forget_oldest_items
from realtime.output_buffer import OutputBufferEvents
from realtime.outputs import WebSocketAudioOutput
from realtime.tool_protocol import create_function_item
from tools import build_tool_runner
from realtime.prometheus import ServerMetrics

log = logging.getLogger(__name__)


@dataclass
class ServerContext:
    """What all sessions of one server share."""

    config: Config
    stages: dict[str, Any]
    scheduler: Scheduler = field(default_factory=Scheduler)  # the stages' model work (core.scheduler)
    stats: SpeculationStats = field(default_factory=SpeculationStats)
    sessions: set["RealtimeSession"] = field(default_factory=set)
    recent_turns: deque = field(default_factory=lambda: deque(maxlen=200))  # TurnMetrics
    admission: Admission = field(init=False)
    ready: bool = False  # the stages are up
    clock: Callable[[], float] = time.monotonic  # when output audio plays (a simulated one in tests)
    metrics: ServerMetrics = field(default_factory=ServerMetrics)  # GET /metrics (Prometheus)

    def __post_init__(self) -> None:
        # Server-side tools (the config's `tools:`), offered to every session's replies.
        self.tool_runner = build_tool_runner(self.config.tools) if self.config.tools else None
        self.monitor = LoadMonitor(self.scheduler, self.config.server.admission)
        self.admission = Admission(self.monitor, self.config.server.max_sessions)
        self.metrics.watch(self)


class RealtimeSession:
    def __init__(self, server: ServerContext, transport: str,
                 make_output: Callable[["RealtimeSession"], AudioOutput], reservation: Reservation | None = None,
                 tools=None) -> None:
        """`tools`: this session's server-side tools (a phone call's call control), else the server's."""
        cfg = server.config
        self.server = server
        self.reservation = reservation  # its place under admission, given back at close()
        self.transport = transport
        self.closed = False
        # Bounded by server.limits.max_outbound_events (send()); a transport that reads it slowly
        # gets an error and is closed rather than holding the server's memory.
        self.outbox: asyncio.Queue[str] = asyncio.Queue()
        self.limits = cfg.server.limits
        self.overflowed = False
        self.uncommitted_s = 0.0  # appended audio not committed yet, with turn detection off
        # The transport's way to end its connection from our side (limits, overflow); set by it.
        self.closer: Callable[[str], Awaitable[None]] | None = None
        self.controller_config = cfg.controller.model_copy()  # session.update may change it
        if transport == "websocket":
            # A Realtime WebSocket client plays the audio itself: by the protocol it stops at
            # speech_started and truncates the item, so the reply cannot resume under it.
            self.controller_config.resume_after_false_interruption = False
        self.settings = p.SessionSettings(instructions=cfg.context.system_prompt)
        self.has_turn_model = "turn" in server.stages
        semantic = self.has_turn_model and self.controller_config.semantic_turn
        self.settings.turn_detection = self._render_turn_detection(
            "semantic_vad" if semantic else "server_vad", {"eagerness": self.controller_config.eagerness})
        self.settings.echo_cancellation = getattr(cfg.server.echo_cancellation, transport, False)
        self.renderer = EventRenderer(self.settings)
        self.echo = EchoCanceller(self.settings.echo_cancellation, clock=server.clock)
        self.set_input(input_for(self.settings.input_format, self.settings.input_rate))
        self.context = Context(cfg.context.system_prompt, cfg.context.max_prompt_tokens)
        self.output = make_output(self)
        self.output.echo = self.echo  # the reference: what the output plays, when it plays
        self.output_events: OutputBufferEvents | None = None
        if transport == "webrtc":  # OpenAI sends output_audio_buffer.* on WebRTC only
            self.output = self.output_events = OutputBufferEvents(self.output, self.send)
        stages = Stages(vad=server.stages["vad"].create(), tokenizer=server.stages["tokenizer"].create(),
                        llm=server.stages["llm"], decoder=server.stages["decoder"],
                        turn=server.stages.get("turn"))
        self.controller = Controller(stages, self.context, self.output, self._on_controller_event,
                                     self.controller_config, server.stats, session_id=self.settings.id,
                                     tool_runner=tools or server.tool_runner)
        server.sessions.add(self)
        server.metrics.sessions_started.labels(transport).inc()
        self.send({"type": "session.created", "session": self.settings.render()})
        self.lifetime = Lifetime(self.limits.idle_timeout_s, self.limits.max_session_s, self.limits.expiry_warning_s,
                                 self._warn_expiry, self.end)

    @property
    def id(self) -> str:
        return self.settings.id

    # -- out -----------------------------------------------------------------------------------

    def send(self, event: dict[str, Any]) -> None:
        if self.closed or self.overflowed:
            return
        if self.outbox.qsize() >= self.limits.max_outbound_events:
            self._overflow()
            return
        if event.get("type") == "error":
            self.server.metrics.count_error(event.get("error", {}).get("code"))
        self.outbox.put_nowait(json.dumps({"event_id": p.new_id("event"), **event}))

    def _overflow(self) -> None:
        """The client does not read its events: one error past the bound, then the session ends."""
        self.overflowed = True
        log.warning("session %s: %d events unread; ending it", self.id, self.outbox.qsize())
        message = (f"{self.limits.max_outbound_events} server events are waiting to be read; the session ends "
                   "(server.limits.max_outbound_events)")
        self.server.metrics.count_error("outbound_queue_full")
        self.outbox.put_nowait(json.dumps({"event_id": p.new_id("event"), **p.error_event(
            "server_error", "outbound_queue_full", message)}))
        asyncio.get_running_loop().create_task(self._close_transport(message))

    def _warn_expiry(self, reason: str, seconds_left: float) -> None:
        """Before an idle timeout or the maximum duration: time to wrap up, or to reconnect."""
        self.send({"type": "step.session_expiring", "reason": reason, "expires_in_s": seconds_left})

    async def end(self, reason: str, message: str, flush_s: float = 2.0) -> None:
        """End the session from the server's side, with an event saying why, then close its
        connection (the transport's closer)."""
        if self.closed:
            return
        log.info("session %s: ending (%s)", self.id, reason)
        self.send({"type": "step.session_ending", "reason": reason})
        code = "session_expired" if reason == "max_duration" else reason
        self.send(p.error_event("invalid_request_error", code, message))
        loop = asyncio.get_running_loop()
        until = loop.time() + flush_s
        while not self.outbox.empty() and loop.time() < until and not self.closed:
            await asyncio.sleep(0.02)
        await self._close_transport(message)

    async def _close_transport(self, message: str) -> None:
        try:
            if self.closer is not None:
                await self.closer(message)
        finally:
            await self.close()

    def _on_controller_event(self, event: object) -> None:
        self.lifetime.touch()
        self.server.metrics.observe(event)
        if isinstance(event, ev.TurnMetrics):
            self.server.recent_turns.append(event)
            if (delay := event.values.get("eot_to_first_audio_ms")) is not None:
                self.server.monitor.note_reply(delay)  # admission: are calls answered in time?
        if isinstance(event, ev.TurnTakenBack) and event.committed:  # the item left the conversation
            turns = self.context.turns
            self.renderer.forget_item(event.item_id, turns[-1].item_id if turns else None)
        for out in self.renderer.render(event):
            self.send(out)
        if isinstance(event, ev.ResponseDone) and self.output_events is not None:
            self.output_events.response_done(event.response_id)
        if len(self.context.turns) > self.limits.max_conversation_items:
            forget_oldest_items(self)

    # -- in ------------------------------------------------------------------------------------

    def set_input(self, source: PcmInput) -> None:
        """The decoder of client audio; the echo canceller runs at its rate (realtime/echo.py)."""
        self.input = source
        source.echo = self.echo
        self.echo.configure(rate=aec_rate(source.rate))

    def push_frames(self, frames: list[np.ndarray]) -> None:
        if not self.closed:
            for frame in frames:
                self.controller.push_audio(frame)

    def dtmf(self, digit: str) -> None:
        """A keypad press (telephony): the Realtime event, and a note in the context for the next
        reply. Not speech, so a reply that is playing goes on."""
        if not self.closed:
            self.send({"type": "input_audio_buffer.dtmf_event_received", "event": digit,
                       "received_at": int(time.time())})
            self.controller.note_dtmf(digit)

    async def handle_text(self, raw: str | bytes) -> None:
        """One client event. Never raises for a client mistake: it answers with an error event."""
        if self.closed:
            return
        event = None
        try:
            event = p.parse_client_event(raw, self.server.config.server.max_event_bytes)
            if event.type != "input_audio_buffer.append":  # streamed silence is not activity
                self.lifetime.touch()
            await self._dispatch(event)
        except p.ProtocolError as exc:
            if exc.event_id is None and event is not None:
                exc.event_id = event.event_id  # errors name the client event they answer
            self.send(exc.event())
        except Exception as exc:  # a bug must not end the session either
            log.exception("session %s: handling a client event failed", self.id)
            self.send(p.error_event("server_error", "internal_error", describe_failure(
                f"the server could not handle this {getattr(event, 'type', 'client')} event", exc)))

    async def _dispatch(self, event: p.ClientEvent) -> None:
        ctl = self.controller
        match event:
            case p.InputAudioBufferAppend():
                try:
                    frames = self.input.append(event.audio)
                except AudioFormatError as exc:
                    raise p.ProtocolError("invalid_audio", str(exc), "audio", event.event_id) from None
                bound_input(self, frames, event.event_id)
                self.push_frames(frames)
            case p.SessionUpdate():
                self._update_session(event)
            case p.ResponseCreate():
                if ctl.state is State.BOT_REPLYING:
                    raise p.ProtocolError("conversation_already_has_active_response",
                                          "a response is in progress; cancel it first", None, event.event_id)
                tools, limit = p.response_tools(event), p.response_output_token_limit(event)  # both valid, or none set
                ctl.override_tools(*tools)
                ctl.override_max_output_tokens(limit)
                ctl.create_response()
            case p.ResponseCancel():
                if not await ctl.cancel_response():
                    raise p.ProtocolError("response_cancel_not_active", "no response is in progress",
                                          None, event.event_id)
            case p.ConversationItemTruncate():
                if not ctl.truncate(event.item_id, event.audio_end_ms):
                    raise p.ProtocolError("item_truncate_invalid_item_id",
                                          f"no assistant item {event.item_id!r}", "item_id", event.event_id)
                self.send({"type": "conversation.item.truncated", "item_id": event.item_id,
                           "content_index": event.content_index, "audio_end_ms": event.audio_end_ms})
            case p.ConversationItemCreate():
                self._create_item(event)
            case p.ConversationItemDelete():
                self._delete_item(event.item_id)
            case p.ClientEvent(type="output_audio_buffer.clear"):
                await self._clear_output(event)
            case p.ClientEvent(type="input_audio_buffer.commit"):
                await self._commit(event)
            case p.ClientEvent(type="input_audio_buffer.clear"):
                ctl.clear_input()
                self.input.clear()
                self.send({"type": "input_audio_buffer.cleared"})

    async def _commit(self, event: p.ClientEvent) -> None:
        ctl = self.controller
        if await ctl.commit_input() is None:
            raise p.ProtocolError("input_audio_buffer_commit_empty", "the input audio buffer is empty",
                                  None, event.event_id)
        if ctl.turn_detection:  # server VAD answers every committed turn (create_response: true)
            ctl.create_response()

    def _create_item(self, event: p.ConversationItemCreate) -> None:
        item = event.item
        if len(self.context.turns) >= self.limits.max_conversation_items:
            raise p.ProtocolError("conversation_full", f"the conversation holds {len(self.context.turns)} items, the "
                                  "most a session keeps (server.limits.max_conversation_items); delete some first")
        if item.id and self.context.find(item.id) is not None:
            raise p.ProtocolError("item_already_exists", f"an item {item.id!r} already exists", "item.id")
        try:
            if item.type in ("function_call_output", "function_call"):
                item_id, rendered = create_function_item(self.controller, item, event.previous_item_id)
            else:
                text = item.message_text()
                item_id = self.controller.add_message(item.role, text, item.id, event.previous_item_id)
                part = {"type": "output_text" if item.role == "assistant" else "input_text", "text": text}
                rendered = {"id": item_id, "object": "realtime.item", "type": "message", "role": item.role,
                            "status": "completed", "content": [part]}
        except KeyError:
            raise p.ProtocolError("previous_item_not_found", f"no item {event.previous_item_id!r}",
                                  "previous_item_id") from None
        if event.previous_item_id is None:
            self.renderer.note_item(item_id)
        previous = self.context.previous_id(item_id)
        for kind in ("conversation.item.added", "conversation.item.done"):
            self.send({"type": kind, "previous_item_id": previous, "item": rendered})

    def _delete_item(self, item_id: str) -> None:
        if not self.controller.delete_item(item_id):
            raise p.ProtocolError("item_delete_invalid_item_id", f"no item {item_id!r}", "item_id")
        turns = self.context.turns
        self.renderer.forget_item(item_id, turns[-1].item_id if turns else None)
        self.send({"type": "conversation.item.deleted", "item_id": item_id})

    async def _clear_output(self, event: p.ClientEvent) -> None:
        """output_audio_buffer.clear (WebRTC): cut the audio; a response still running is cancelled
        too (OpenAI asks clients to cancel first), so the history keeps only what was heard."""
        out = self.output_events
        if out is None:
            raise p.ProtocolError("unsupported_event", "output_audio_buffer.clear is for WebRTC sessions; on a "
                                  "WebSocket use response.cancel and conversation.item.truncate", "type")
        if out.response_id is None:
            raise p.ProtocolError("output_audio_buffer_empty", "no response audio has been played yet")
        was_active = out.active
        if not await self.controller.cancel_response():
            out.clear()
        if not was_active:  # nothing was playing: acknowledge anyway, the buffer is empty
            self.send({"type": "output_audio_buffer.cleared", "response_id": out.response_id})

    def _update_session(self, event: p.SessionUpdate) -> None:
        new = self.settings.apply(event.session)
        td = new.turn_detection
        if td is not None and td["type"] == "semantic_vad" and not self.has_turn_model:
            raise p.ProtocolError("invalid_value", "turn_detection.type semantic_vad needs an end-of-turn "
                                  "model, and this server has none (config: turn.impl); use server_vad",
                                  param="session.turn_detection.type")
        language = (new.transcription or {}).get("language")
        if language != (self.settings.transcription or {}).get("language"):
            try:  # before anything else changes: a refused update changes nothing
                self.controller.set_input_language(language)
            except ValueError as exc:
                raise p.ProtocolError("invalid_value", str(exc), "session.audio.input.transcription.language") from None
        if (new.input_format, new.input_rate) != (self.settings.input_format, self.settings.input_rate):
            self.set_input(input_for(new.input_format, new.input_rate))
        self.echo.configure(enabled=new.echo_cancellation)
        if isinstance(self.output, WebSocketAudioOutput):
            self.output.rate, self.output.format = new.output_rate, new.output_format  # from the next reply on
        self.context.system_prompt = new.instructions
        self.controller.client_tools, self.controller.tool_choice = new.tools, new.tool_choice
        self.controller.max_output_tokens = new.max_output_tokens
        td = new.turn_detection
        self.controller.turn_detection = td is not None
        if td is not None:
            self.controller.auto_respond = td.get("create_response") is not False
            self.controller.interruptible = td.get("interrupt_response") is not False
        if td is not None:
            new.turn_detection = self._render_turn_detection(td["type"], td)
        self.settings = self.renderer.settings = new
        self.send({"type": "session.updated", "session": new.render()})

    def _render_turn_detection(self, kind: str, given: dict[str, Any]) -> dict[str, Any]:
        """Apply server_vad numbers, or semantic_vad's eagerness (the end-of-turn model sets each
        pause's wait: controller/turn_policy.py), to this session's controller; echo what is in force."""
        cfg = self.controller_config
        cfg.semantic_turn = kind == "semantic_vad"
        if kind == "semantic_vad":
            cfg.eagerness = given.get("eagerness") or "auto"
        if given.get("threshold") is not None:
            cfg.speech_threshold = given["threshold"]
        if given.get("silence_duration_ms") is not None:
            cfg.end_of_turn_ms = given["silence_duration_ms"]
            # speculation starts at the pause, which must come before the end of the turn
            cfg.pause_ms = min(cfg.pause_ms, max(20, cfg.end_of_turn_ms // 2))
        common = {"type": kind, "create_response": given.get("create_response") is not False,
                  "interrupt_response": given.get("interrupt_response") is not False}
        if kind == "semantic_vad":
            return {**common, "eagerness": cfg.eagerness}
        return {**common, "threshold": cfg.speech_threshold, "silence_duration_ms": cfg.end_of_turn_ms,
                "prefix_padding_ms": cfg.preroll_ms, "idle_timeout_ms": None}

    # -- end -----------------------------------------------------------------------------------

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.lifetime.cancel()
        self.server.sessions.discard(self)
        if self.reservation is not None:
            self.reservation.release()
        try:
            await self.controller.close()
        finally:
            self.output.clear()
            # what the call's turns freed goes back to the OS (core/memory.py); off the loop
            asyncio.get_running_loop().run_in_executor(None, memory.trim)
