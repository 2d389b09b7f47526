"""The OpenAI Realtime (GA) wire protocol: client events in, server events out.

parse_client_event() turns one text message into a validated pydantic model or raises
ProtocolError (which the session sends back as an `error` event and carries on).
SessionSettings holds what session.update may change and renders the session object.
EventRenderer (realtime/events_out.py) turns controller events into server events.

Shapes follow the openai SDK's types (openai/types/realtime/); tests/test_protocol.py validates
every event we render against them. Fields OpenAI accepts but this server does not use
(noise_reduction, ...) are accepted and ignored; see docs/protocol.md.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from realtime import g711
from realtime.audio import SUPPORTED_PCM_RATES
from realtime.tool_protocol import FunctionTool, checked_tool_choice, function_tools, response_tools  # noqa: F401

DEFAULT_RATE = 24_000


class ProtocolError(Exception):
    """A client event we cannot act on. Rendered as {type: "error", error: {...}}."""

    def __init__(self, code: str, message: str, param: str | None = None, event_id: str | None = None,
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.code, self.message, self.param, self.event_id, self.type = code, message, param, event_id, type_

    def event(self) -> dict[str, Any]:
        return error_event(self.type, self.code, self.message, self.param, self.event_id)


def error_event(type_: str, code: str | None, message: str, param: str | None = None,
                event_id: str | None = None) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "code": code, "message": message, "param": param,
                                       "event_id": event_id}}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


# -- client events -----------------------------------------------------------------------------

class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class AudioFormat(_Lenient):
    type: str = "audio/pcm"
    rate: int | None = None


class TurnDetection(_Lenient):
    type: Literal["server_vad", "semantic_vad"]
    threshold: float | None = Field(None, gt=0, lt=1)
    silence_duration_ms: int | None = Field(None, ge=40, le=10_000)
    prefix_padding_ms: int | None = Field(None, ge=0)
    create_response: bool | None = None
    interrupt_response: bool | None = None
    idle_timeout_ms: int | None = None
    eagerness: Literal["low", "medium", "high", "auto"] | None = None


class EchoCancellation(_Lenient):  # our extension (OpenAI has none): server-side AEC of the input
    type: Literal["aec3"]


LANGUAGE_PATTERN = r"^[a-z]{2,3}$"  # ISO 639-1 (or -3) code, as the Realtime API's transcription.language


class Transcription(_Lenient):
    model: str | None = None  # echoed; this server has the one ASR of its config
    language: str | None = Field(None, pattern=LANGUAGE_PATTERN, description="ISO-639-1 code; null: detect")
    prompt: str | None = None  # accepted, not used


class AudioInputSettings(_Lenient):
    format: AudioFormat | None = None
    turn_detection: TurnDetection | None = None
    transcription: Transcription | None = None
    noise_reduction: dict | None = None
    echo_cancellation: EchoCancellation | None = None


class AudioOutputSettings(_Lenient):
    format: AudioFormat | None = None
    voice: str | dict | None = None
    speed: float | None = None


class AudioSettings(_Lenient):
    input: AudioInputSettings | None = None
    output: AudioOutputSettings | None = None


class SessionIn(_Lenient):
    type: Literal["realtime"] = "realtime"
    model: str | None = None
    instructions: str | None = None
    output_modalities: list[Literal["audio", "text"]] | None = None
    audio: AudioSettings | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: str | dict | None = None
    max_output_tokens: Any = None  # 1..4096 or "inf" (checked by output_token_limit)


class ClientEvent(_Lenient):
    type: str
    event_id: str | None = None


class SessionUpdate(ClientEvent):
    session: SessionIn


class InputAudioBufferAppend(ClientEvent):
    audio: str


class ResponseCreate(ClientEvent):
    response: dict | None = None


class ResponseCancel(ClientEvent):
    response_id: str | None = None


class ConversationItemTruncate(ClientEvent):
    item_id: str
    content_index: int = Field(ge=0)
    audio_end_ms: int = Field(ge=0)


# Content part types whose `text` becomes the item's text (input_text for user/system items,
# output_text for assistant ones; "text" is what older clients send). An audio part counts only
# by its transcript: this server does not transcribe audio attached to an item.
TEXT_PARTS = ("input_text", "text", "output_text")
AUDIO_PARTS = ("input_audio", "output_audio", "audio")


class ContentPart(_Lenient):
    type: str
    text: str | None = None
    transcript: str | None = None
    audio: str | None = None


class ConversationItemIn(_Lenient):
    type: str
    role: Literal["user", "assistant", "system"] | None = None
    id: str | None = Field(None, min_length=1, max_length=64)
    content: list[ContentPart] = Field(default_factory=list)
    call_id: str | None = None  # function_call / function_call_output items
    name: str | None = None  # function_call
    arguments: str | None = None  # function_call
    output: str | None = None  # function_call_output

    def message_text(self) -> str:
        """The item's text, or ProtocolError for what this server cannot hold (no tools, no audio)."""
        if self.type != "message":
            raise ProtocolError("unsupported_item_type", f"item type {self.type!r} is not supported; "
                                "message, function_call and function_call_output items are", "item.type")
        if self.role is None:
            raise ProtocolError("missing_field", "a message item needs a role", "item.role")
        texts = []
        for i, part in enumerate(self.content):
            if part.type in TEXT_PARTS and part.text is not None:
                texts.append(part.text)
            elif part.type in AUDIO_PARTS and part.transcript is not None and part.audio is None:
                texts.append(part.transcript)
            else:
                raise ProtocolError("unsupported_content_type", f"content part {part.type!r} is not supported "
                                    "here; send text (input_text / output_text)", f"item.content.{i}.type")
        text = " ".join(t.strip() for t in texts if t.strip())
        if not text:
            raise ProtocolError("invalid_value", "the message item has no text", "item.content")
        return text


class ConversationItemCreate(ClientEvent):
    item: ConversationItemIn
    previous_item_id: str | None = None


class ConversationItemDelete(ClientEvent):
    item_id: str


CLIENT_EVENTS: dict[str, type[ClientEvent]] = {
    "session.update": SessionUpdate,
    "input_audio_buffer.append": InputAudioBufferAppend,
    "input_audio_buffer.commit": ClientEvent,
    "input_audio_buffer.clear": ClientEvent,
    "response.create": ResponseCreate,
    "response.cancel": ResponseCancel,
    "conversation.item.truncate": ConversationItemTruncate,
    "conversation.item.create": ConversationItemCreate,
    "conversation.item.delete": ConversationItemDelete,
    "output_audio_buffer.clear": ClientEvent,
}


def parse_client_event(raw: str | bytes, max_bytes: int) -> ClientEvent:
    size = len(raw.encode("utf-8") if isinstance(raw, str) else raw)
    if size > max_bytes:
        raise ProtocolError("event_too_large", f"event is {size} bytes; the limit is {max_bytes}")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("invalid_json", f"event is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("invalid_event", "event must be a JSON object")
    event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("missing_field", "event has no 'type'", "type", event_id)
    model = CLIENT_EVENTS.get(kind)
    if model is None:
        raise ProtocolError("unknown_event", f"unknown or unsupported event type {kind!r}", "type", event_id)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        code = "missing_field" if err["type"] == "missing" else "invalid_value"
        raise ProtocolError(code, f"{kind}: {where}: {err['msg']}", where, event_id) from None


# -- session settings --------------------------------------------------------------------------

def _format_rate(fmt: AudioFormat, param: str) -> int:
    """The sample rate of a format (8000 for G.711); ProtocolError for what we cannot take."""
    if fmt.type in (g711.MULAW, g711.ALAW):
        return g711.RATE
    if fmt.type != "audio/pcm":
        raise ProtocolError("unsupported_audio_format", f"audio format {fmt.type!r} is not supported; "
                            "use audio/pcm, audio/pcmu or audio/pcma", param)
    rate = fmt.rate or DEFAULT_RATE
    if rate not in SUPPORTED_PCM_RATES:
        raise ProtocolError("unsupported_audio_format", f"audio/pcm rate {rate} is not supported "
                            f"(supported: {', '.join(map(str, SUPPORTED_PCM_RATES))})", f"{param}.rate")
    return rate


@dataclass
class SessionSettings:
    instructions: str
    model: str = "step-realtime"
    id: str = field(default_factory=lambda: new_id("sess"))
    input_rate: int = DEFAULT_RATE
    output_rate: int = DEFAULT_RATE
    input_format: str = "audio/pcm"  # or g711.MULAW / g711.ALAW (then the rate is 8000)
    output_format: str = "audio/pcm"
    voice: str | dict = "default"
    turn_detection: dict | None = field(default_factory=lambda: {"type": "server_vad"})
    echo_cancellation: bool = False  # rendered as {"type": "aec3"} or null
    transcription: dict | None = None  # {"model", "language", "prompt"} as the client gave them
    tools: list[dict] = field(default_factory=list)  # the client's function tools
    tool_choice: str | dict = "auto"
    max_output_tokens: int | None = None  # None: "inf" (the LLM stage's own max_tokens)

    def apply(self, update: SessionIn) -> "SessionSettings":
        """A copy with the update applied; raises ProtocolError and changes nothing on a bad value."""
        new = SessionSettings(**self.__dict__)
        if update.model:
            new.model = update.model
        if update.instructions is not None:
            new.instructions = update.instructions
        if update.tools is not None:
            new.tools = function_tools(update.tools)
        if update.tool_choice is not None:
            new.tool_choice = checked_tool_choice(update.tool_choice, "session.tool_choice")
        if update.max_output_tokens is not None:
            new.max_output_tokens = output_token_limit(update.max_output_tokens, "session.max_output_tokens")
        if update.output_modalities is not None and "audio" not in update.output_modalities:
            raise ProtocolError("unsupported_modalities", "this server always answers with audio",
                                "session.output_modalities")
        audio_in = update.audio.input if update.audio else None
        audio_out = update.audio.output if update.audio else None
        if audio_in is not None:
            if audio_in.format is not None:
                new.input_rate = _format_rate(audio_in.format, "session.audio.input.format")
                new.input_format = audio_in.format.type
            if "turn_detection" in audio_in.model_fields_set:
                td = audio_in.turn_detection
                new.turn_detection = None if td is None else td.model_dump(exclude_none=True)
            if "echo_cancellation" in audio_in.model_fields_set:
                new.echo_cancellation = audio_in.echo_cancellation is not None
            if "transcription" in audio_in.model_fields_set:
                tr = audio_in.transcription
                new.transcription = None if tr is None else tr.model_dump(exclude_none=True)
        if audio_out is not None:
            if audio_out.format is not None:
                new.output_rate = _format_rate(audio_out.format, "session.audio.output.format")
                new.output_format = audio_out.format.type
            if audio_out.voice is not None:
                new.voice = audio_out.voice
        return new

    def render(self) -> dict[str, Any]:
        return {
            "type": "realtime", "object": "realtime.session", "id": self.id, "model": self.model,
            "output_modalities": ["audio"], "instructions": self.instructions,
            "audio": {
                "input": {
                    "format": render_format(self.input_format, self.input_rate),
                    "turn_detection": self.turn_detection,
                    "transcription": self.transcription, "noise_reduction": None,
                    "echo_cancellation": {"type": "aec3"} if self.echo_cancellation else None,
                },
                "output": {"format": self.render_output_format(), "voice": self.voice},
            },
            "tools": self.tools, "tool_choice": self.tool_choice,
            "max_output_tokens": "inf" if self.max_output_tokens is None else self.max_output_tokens,
        }

    def render_output_format(self) -> dict[str, Any]:
        return render_format(self.output_format, self.output_rate)


def output_token_limit(value: Any, param: str) -> int | None:
    """A Realtime `max_output_tokens`: an integer 1..4096, or "inf" (None: no limit of the client's)."""
    if value == "inf":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 4096:
        return value
    raise ProtocolError("invalid_value", "max_output_tokens must be an integer from 1 to 4096 or \"inf\"", param)


def response_output_token_limit(event: "ResponseCreate") -> int | None:
    """response.create's `response.max_output_tokens`: None when absent (the session's), 0 for "inf"
    (no limit for this response, whatever the session's)."""
    value = (event.response or {}).get("max_output_tokens")
    return None if value is None else output_token_limit(value, "response.max_output_tokens") or 0


def render_format(format_type: str, rate: int) -> dict[str, Any]:
    """G.711 formats have no rate field (always 8 kHz); audio/pcm names its rate."""
    return {"type": format_type} if format_type != "audio/pcm" else {"type": "audio/pcm", "rate": rate}
