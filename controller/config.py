"""Controller timing. All durations in milliseconds of audio (the session's audio clock)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ControllerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    speech_threshold: float = Field(0.5, gt=0, lt=1, description="VAD probability that counts as speech")
    onset_ms: int = Field(60, ge=20, description="speech needed to enter UserSpeaking")
    pause_ms: int = Field(200, ge=20, description="silence that makes a pause (speculation starts)")
    end_of_turn_ms: int = Field(650, ge=40, description="silence that confirms the end of the turn")
    barge_in_ms: int = Field(250, ge=20, description="speech during a reply that interrupts it")
    preroll_ms: int = Field(300, ge=0, description="audio before onset kept for the tokenizer")
    speculation: bool = Field(True, description="start replies at the pause (off for A/B runs)")
    eot_hints: bool = Field(True, description="let the transcript shorten/lengthen the end-of-turn wait")
    max_turn_s: float = Field(30.0, gt=0, description="force the end of a turn that runs this long")
    take_back_turns: bool = Field(True, description="speech before any of the reply was heard resumes the "
                                                    "user's turn (the end of turn was premature)")
    resume_after_false_interruption: bool = Field(
        True, description="speech over a reply that carries no words (a cough, 'mm-hm') resumes it")
    # The end-of-turn model (the `turn` stage), when there is one: controller/turn_policy.py
    semantic_turn: bool = Field(True, description="let the end-of-turn model set each pause's wait "
                                                  "(Realtime: semantic_vad); false: the fixed end_of_turn_ms")
    eagerness: Literal["low", "medium", "high", "auto"] = Field(
        "auto", description="how soon a finished-sounding turn is taken (Realtime semantic_vad eagerness)")
    max_reply_sentences: int | None = Field(
        None, ge=1, description="a reply ends after this many sentences and its LLM stream is closed (small models "
                                "asked for one or two write five); null: only max_tokens ends it")
    max_tool_rounds: int = Field(1, ge=1, description="tool rounds the server answers itself per user turn; the "
                                 "reply after the last one is offered no tools, so it speaks (small models "
                                 "otherwise call the same tool again)")
    # Deadlines on the in-process stages, as the LLM client has its request timeout (llm.timeout):
    # past one, the turn or reply ends with an `error` event and the session goes on.
    asr_timeout_s: float = Field(30.0, gt=0, description="longest wait for a turn's transcript (queueing included)")
    tts_timeout_s: float = Field(30.0, gt=0, description="longest the decoder may hold text without producing "
                                                         "audio (waits for the LLM not counted)")
    max_end_of_turn_ms: int = Field(1500, ge=100, description="the longest wait, for a turn that sounds "
                                                              "unfinished (a cap, as in 'my number is 0 7 …')")

    @model_validator(mode="after")
    def _order(self) -> "ControllerConfig":
        if self.end_of_turn_ms <= self.pause_ms:
            raise ValueError("end_of_turn_ms must be longer than pause_ms")
        if self.max_end_of_turn_ms < self.end_of_turn_ms:
            raise ValueError("max_end_of_turn_ms must be at least end_of_turn_ms")
        return self
