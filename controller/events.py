"""What the controller tells the world. realtime/protocol.py turns these into Realtime JSON.

Times ending in _ms are on the session's audio clock (milliseconds of input audio received),
the clock OpenAI's audio_start_ms/audio_end_ms use.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field


def new_id(prefix: str) -> str:
    """Item and response ids, in the Realtime API's shape (`item_…`, `resp_…`)."""
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


@dataclass(frozen=True)
class StateChanged:
    state: str
    previous: str
    reason: str
    t_ms: int


@dataclass(frozen=True)
class SpeechStarted:
    item_id: str
    audio_start_ms: int


@dataclass(frozen=True)
class SpeechStopped:
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True)
class InputCommitted:
    item_id: str


@dataclass(frozen=True)
class InputTranscript:
    item_id: str
    text: str


@dataclass(frozen=True)
class Speculation:
    action: str  # "started" | "discarded" | "committed"
    t_ms: int
    text: str = ""


@dataclass(frozen=True)
class TurnJudged:
    """The end-of-turn model scored a pause: P(finished) and the wait it set (ms of silence); again
    when the chat model has scored the pause's words (`text_probability`, llm/turn_end.py)."""
    item_id: str
    probability: float | None
    wait_ms: int
    t_ms: int
    text_probability: float | None = None


@dataclass(frozen=True)
class TurnTakenBack:
    """The user went on speaking before any of the reply was heard: the end of turn is withdrawn
    (`item_id`, if it was committed, leaves the conversation) and the turn continues as
    `new_item_id`."""
    item_id: str
    committed: bool
    new_item_id: str
    t_ms: int
    response_id: str | None = None  # the withdrawn reply, if it had started


@dataclass(frozen=True)
class ResponseResumed:
    """Speech over the reply carried no words (`heard`: what was said, maybe ""): it plays on
    from `resumed_at_s` of its audio."""
    response_id: str
    item_id: str
    resumed_at_s: float
    heard: str


@dataclass(frozen=True)
class ResponseCreated:
    response_id: str
    item_id: str


@dataclass(frozen=True)
class TranscriptDelta:
    response_id: str
    item_id: str
    delta: str


@dataclass(frozen=True)
class AudioDone:
    """All audio of a response has been handed to the output (it may still be playing)."""

    response_id: str
    item_id: str


@dataclass(frozen=True)
class FunctionCallItem:
    """A function call the reply made, as its output item (`output_index`: after the spoken
    message, item 0, if the model said something before calling; else from 0). `status`:
    "completed" once its arguments are whole, else "incomplete"."""
    item_id: str
    call_id: str
    name: str
    arguments: str
    output_index: int
    status: str = "completed"


@dataclass(frozen=True)
class FunctionCallStarted:
    response_id: str
    call: FunctionCallItem


@dataclass(frozen=True)
class FunctionCallDelta:
    response_id: str
    call: FunctionCallItem  # as it was when this delta came
    delta: str


@dataclass(frozen=True)
class FunctionCallDone:
    response_id: str
    call: FunctionCallItem


@dataclass(frozen=True)
class ToolStatus:
    """A tool call's fate (step.tool_call): "invalid" (unknown tool, bad arguments), "client" (left
    to the client), "running", "completed", "failed", "timeout" (server tools), "interrupted" (the
    caller spoke while a server tool ran: it runs on, its result joins the history, no answer)."""
    call_id: str
    name: str
    status: str
    detail: str = ""


@dataclass(frozen=True)
class FunctionOutputAdded:
    """A server-run tool's result joined the conversation (a function_call_output item)."""
    item_id: str
    call_id: str
    output: str
    previous_item_id: str | None


@dataclass(frozen=True)
class ResponseDone:
    response_id: str
    item_id: str
    status: str  # "completed" | "incomplete" (cut at the token limit) | "cancelled" | "failed"
    text: str  # what the assistant said (after a barge-in: what was heard)
    reason: str = ""
    calls: tuple[FunctionCallItem, ...] = ()  # function_call output items, after the message
    message: bool = True  # False: the model only called (no assistant message was said or kept)


@dataclass(frozen=True)
class TurnMetrics:
    response_id: str
    speculative: bool  # the played reply was a committed speculation
    values: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class ErrorEvent:
    code: str
    message: str


Event = (
    StateChanged | SpeechStarted | SpeechStopped | InputCommitted | InputTranscript | Speculation
    | ResponseCreated | TranscriptDelta | AudioDone | ResponseDone | TurnMetrics | ErrorEvent
    | FunctionCallStarted | FunctionCallDelta | FunctionCallDone | ToolStatus | FunctionOutputAdded
)
