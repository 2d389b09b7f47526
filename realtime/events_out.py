"""Controller events (controller/events.py) → Realtime server events.

Standard events use OpenAI's GA names and shapes. What the Realtime API has no word for (the
controller's state, speculation, per-turn latency) goes out as "step.*" events; the openai SDK
passes unknown types through, so its clients are unaffected.
"""
from __future__ import annotations

from typing import Any

from controller import events as ev
from realtime.protocol import SessionSettings, error_event
from realtime.tool_protocol import function_call_item, function_output_item

# response.done status_details.reason for the controller's cancel reasons.
_CANCEL_REASONS = {"barge_in": "turn_detected", "turn_resumed": "turn_detected",  # our step.turn_taken_back says which
                   "client_cancelled": "client_cancelled"}
_PART = {"output_index": 0, "content_index": 0}


def _assistant_item(item_id: str, status: str, transcript: str | None) -> dict[str, Any]:
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": "assistant",
            "status": status, "content": [{"type": "output_audio", "transcript": transcript}]}


class EventRenderer:
    """Per session: keeps what later events need (transcripts so far, turn start times)."""

    def __init__(self, settings: SessionSettings) -> None:
        self.settings = settings
        self._speech_start_ms: dict[str, int] = {}
        self._speech_ms: dict[str, int] = {}
        self._last_item: str | None = None
        self._transcripts: dict[str, str] = {}  # response_id -> transcript deltas so far
        # The assistant message of a response is announced with its first words, not at
        # response.created: a response that only calls a function has no message (as OpenAI's).
        self._unopened: dict[str, str] = {}  # response_id -> message item id, not yet announced
        self._calls_seen: set[str] = set()  # responses that started a function call

    def note_item(self, item_id: str) -> None:
        """An item was added at the end of the conversation (conversation.item.create)."""
        self._last_item = item_id

    def forget_item(self, item_id: str, now_last: str | None) -> None:
        """An item was deleted; if it was the last one, the conversation now ends with `now_last`."""
        if self._last_item == item_id:
            self._last_item = now_last

    def _response(self, response_id: str, status: str, output: list | None = None,
                  details: dict | None = None) -> dict[str, Any]:
        return {
            "object": "realtime.response", "id": response_id, "status": status, "status_details": details,
            "output": output or [], "output_modalities": ["audio"], "conversation_id": None,
            "audio": {"output": {"format": self.settings.render_output_format(),
                                 "voice": self.settings.voice}},
            "usage": None,
        }

    def render(self, event: object) -> list[dict[str, Any]]:
        match event:
            case ev.StateChanged():
                return [{"type": "step.state", "state": event.state, "previous": event.previous,
                         "reason": event.reason, "audio_ms": event.t_ms}]
            case ev.SpeechStarted():
                self._speech_start_ms[event.item_id] = event.audio_start_ms
                return [{"type": "input_audio_buffer.speech_started", "item_id": event.item_id,
                         "audio_start_ms": event.audio_start_ms}]
            case ev.SpeechStopped():
                start = self._speech_start_ms.pop(event.item_id, event.audio_end_ms)
                self._speech_ms[event.item_id] = max(0, event.audio_end_ms - start)
                return [{"type": "input_audio_buffer.speech_stopped", "item_id": event.item_id,
                         "audio_end_ms": event.audio_end_ms}]
            case ev.InputCommitted():
                previous, self._last_item = self._last_item, event.item_id
                item = {"id": event.item_id, "object": "realtime.item", "type": "message", "role": "user",
                        "status": "completed", "content": [{"type": "input_audio", "transcript": None}]}
                return [{"type": "input_audio_buffer.committed", "item_id": event.item_id,
                         "previous_item_id": previous},
                        {"type": "conversation.item.added", "item": item, "previous_item_id": previous}]
            case ev.InputTranscript():
                seconds = self._speech_ms.pop(event.item_id, 0) / 1000
                return [{"type": "conversation.item.input_audio_transcription.completed",
                         "item_id": event.item_id, "content_index": 0, "transcript": event.text,
                         "usage": {"type": "duration", "seconds": seconds}}]
            case ev.Speculation():
                return [{"type": "step.speculation", "action": event.action, "audio_ms": event.t_ms,
                         "text": event.text}]
            case ev.TurnTakenBack():  # the user had only paused: the turn goes on as a new item
                out = [{"type": "conversation.item.deleted", "item_id": event.item_id}] if event.committed else []
                return out + [{"type": "step.turn_taken_back", "item_id": event.item_id,
                               "new_item_id": event.new_item_id, "response_id": event.response_id,
                               "audio_ms": event.t_ms}]
            case ev.ResponseResumed():  # an extension, like step.speculation
                return [{"type": "step.response_resumed", "response_id": event.response_id,
                         "item_id": event.item_id, "audio_start_ms": round(event.resumed_at_s * 1000),
                         "heard": event.heard}]
            case ev.ResponseCreated():
                self._transcripts[event.response_id] = ""
                self._unopened[event.response_id] = event.item_id
                return [{"type": "response.created", "response": self._response(event.response_id, "in_progress")}]
            case ev.TranscriptDelta():
                self._transcripts[event.response_id] = self._transcripts.get(event.response_id, "") + event.delta
                return self._open_message(event.response_id) + [
                    {"type": "response.output_audio_transcript.delta", "response_id": event.response_id,
                     "item_id": event.item_id, **_PART, "delta": event.delta}]
            case ev.AudioDone():
                rid, iid = event.response_id, event.item_id
                if rid in self._calls_seen and rid in self._unopened:
                    return []  # it only called: no message, no audio
                text = self._transcripts.get(rid, "")
                return self._open_message(rid) + [
                        {"type": "response.output_audio.done", "response_id": rid, "item_id": iid, **_PART},
                        {"type": "response.output_audio_transcript.done", "response_id": rid, "item_id": iid,
                         **_PART, "transcript": text},
                        {"type": "response.content_part.done", "response_id": rid, "item_id": iid, **_PART,
                         "part": {"type": "audio", "transcript": text}}]
            case ev.ResponseDone():
                return self._response_done(event)
            case ev.FunctionCallStarted() | ev.FunctionCallDelta() | ev.FunctionCallDone():
                return self._function_call(event)
            case ev.FunctionOutputAdded():  # a server-run tool's result
                self._last_item = event.item_id
                item = function_output_item(event.item_id, event.call_id, event.output)
                return [{"type": kind, "previous_item_id": event.previous_item_id, "item": item}
                        for kind in ("conversation.item.added", "conversation.item.done")]
            case ev.ToolStatus():
                return [{"type": "step.tool_call", "call_id": event.call_id, "name": event.name,
                         "status": event.status, "detail": event.detail}]
            case ev.TurnMetrics():
                return [{"type": "step.turn_metrics", "response_id": event.response_id,
                         "speculative": event.speculative, "values": dict(event.values)}]
            case ev.ErrorEvent():
                return [error_event("server_error", event.code, event.message)]
        return []

    def _open_message(self, response_id: str) -> list[dict[str, Any]]:
        """The assistant message's output_item.added and content_part.added, once per response."""
        iid = self._unopened.pop(response_id, None)
        if iid is None:
            return []
        self._last_item = iid
        return [{"type": "response.output_item.added", "response_id": response_id, "output_index": 0,
                 "item": _assistant_item(iid, "in_progress", None)},
                {"type": "response.content_part.added", "response_id": response_id, "item_id": iid, **_PART,
                 "part": {"type": "audio", "transcript": ""}}]

    def _function_call(self, event) -> list[dict[str, Any]]:
        call, rid = event.call, event.response_id
        where = {"response_id": rid, "item_id": call.item_id, "output_index": call.output_index,
                 "call_id": call.call_id}
        match event:
            case ev.FunctionCallStarted():
                self._calls_seen.add(rid)
                # Words before the call (output_index ≥ 1) make a message that comes first.
                opened = self._open_message(rid) if call.output_index > 0 else []
                return opened + [{"type": "response.output_item.added", "response_id": rid,
                                  "output_index": call.output_index, "item": function_call_item(call, "in_progress")}]
            case ev.FunctionCallDelta():
                return [{"type": "response.function_call_arguments.delta", **where, "delta": event.delta}]
        self._last_item = call.item_id
        return [{"type": "response.function_call_arguments.done", **where, "name": call.name,
                 "arguments": call.arguments},
                {"type": "response.output_item.done", "response_id": rid, "output_index": call.output_index,
                 "item": function_call_item(call)}]

    def _response_done(self, event: ev.ResponseDone) -> list[dict[str, Any]]:
        self._transcripts.pop(event.response_id, None)
        self._calls_seen.discard(event.response_id)
        opened = self._open_message(event.response_id) if event.message else []
        self._unopened.pop(event.response_id, None)
        details: dict[str, Any] = {"type": event.status}
        if event.status == "cancelled":
            details["reason"] = _CANCEL_REASONS.get(event.reason, "client_cancelled")
        elif event.status == "incomplete":  # as OpenAI's: the token limit cut it (spoken to a sentence end)
            details["reason"] = "max_output_tokens"
        elif event.status == "failed":
            details["error"] = {"type": "server_error", "code": "reply_failed", "message": event.reason or None}
        calls = [function_call_item(call) for call in event.calls]
        if not event.message:
            return [{"type": "response.done", "response": self._response(event.response_id, event.status,
                                                                         calls, details)}]
        item = _assistant_item(event.item_id, "completed" if event.status == "completed" else "incomplete",
                               event.text)
        return opened + [{"type": "response.output_item.done", "response_id": event.response_id, "output_index": 0,
                          "item": item},
                         {"type": "response.done", "response": self._response(
                             event.response_id, event.status, [item, *calls], details)}]
