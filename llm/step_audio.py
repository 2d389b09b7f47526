"""Step-Audio-Chat over vLLM's OpenAI-compatible API, with Step-Audio's own prompt format.

Step-1's chat template is not a chat-completions template vLLM knows, so the client renders
the prompt itself, exactly as Step-Audio's stepaudio.py does, and sends it raw through
/v1/completions, streamed, stopping at <|EOT|>:

    <|BOT|>system\\n{system}<|EOT|><|BOT|>human\\n{user}<|EOT|><|BOT|>assistant\\n{reply}<|EOT|>...<|BOT|>assistant\\n

A user turn's content is its transcript, or <audio_N>... tokens for the current spoken turn
(UserInput.prompt_text()). Closing the iterator closes the HTTP stream, so vLLM aborts the
request: a discarded speculation stops costing GPU time at once.
"""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing

import openai
from pydantic import BaseModel, ConfigDict, Field

from core.scheduler import Scheduler, WorkDropped
from llm.base import Message, ReplyCut
from llm.openai_chat import stream_text

log = logging.getLogger(__name__)

BOT, EOT = "<|BOT|>", "<|EOT|>"
ROLE_NAMES = {"system": "system", "user": "human", "assistant": "assistant"}


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_url: str = Field("http://127.0.0.1:8000/v1", description="the vLLM server (`vllm serve ... --port 8000`)")
    model: str = Field("step-audio-chat", description="vLLM's --served-model-name")
    api_key: str = "EMPTY"
    max_tokens: int = Field(512, ge=1)
    temperature: float = Field(0.7, ge=0, le=2)  # stepaudio.py's sampling
    top_p: float = Field(0.9, gt=0, le=1)
    timeout: float = Field(60.0, gt=0, description="seconds, per request (connect and each read)")
    max_retries: int = Field(0, ge=0)
    concurrency: int = Field(64, ge=1, description="requests in flight at once (the scheduler's \"llm\" lane: "
                                                   "more wait, most urgent first); vLLM batches them all")


def render_prompt(messages: Sequence[Message]) -> str:
    """Step-Audio's chat template (stepaudio.py apply_chat_template) for text-or-token turns."""
    prompt = "".join(f"{BOT}{ROLE_NAMES[m.role]}\n{m.content}{EOT}" for m in messages)
    if not prompt.endswith(f"{BOT}assistant\n"):
        prompt += f"{BOT}assistant\n"
    return prompt


class StepAudioChatClient:
    """Shared per server; every stream() is one streamed raw completion."""

    def __init__(self, options: Options | None = None, scheduler: Scheduler | None = None) -> None:
        self.options = options or Options()
        self.lane = (scheduler or Scheduler()).lane("llm", self.options.concurrency, serial=False)
        self._client = openai.AsyncOpenAI(base_url=self.options.base_url, api_key=self.options.api_key,
                                          timeout=self.options.timeout, max_retries=self.options.max_retries)

    async def close(self) -> None:
        await self._client.close()

    async def stream(self, messages: Sequence[Message], max_tokens: int | None = None) -> AsyncIterator[str | ReplyCut]:
        # aclosing: closing this iterator must close the inner one (and its HTTP stream) now,
        # not whenever the garbage collector gets to it.
        prompt = render_prompt(messages)
        async with self.lane.slot(), aclosing(self.stream_prompt(prompt, mark_cut=True, max_tokens=max_tokens)) as pieces:
            async for piece in pieces:
                yield piece

    async def warm(self, history: Sequence[Message]) -> None:
        """Evaluate the conversation so far up to the next user header, one token, so vLLM's
        prefix cache (--enable-prefix-caching) holds it when the turn's prompt arrives."""
        prefix = "".join(f"{BOT}{ROLE_NAMES[m.role]}\n{m.content}{EOT}" for m in history) + f"{BOT}human\n"
        try:
            async with self.lane.slot():  # behind real work; dropped if the turn's request supersedes it
                await self._client.completions.create(model=self.options.model, prompt=prefix, max_tokens=1,
                                                      temperature=0.0)
        except WorkDropped:
            pass
        except openai.APIError as exc:  # the turn's own request reports real failures
            log.debug("prefix warm-up failed: %s", exc)

    async def stream_prompt(self, prompt: str, mark_cut: bool = False,
                            max_tokens: int | None = None) -> AsyncIterator[str | ReplyCut]:
        """`mark_cut`: end with a ReplyCut when the server stopped at max_tokens (llm/base.py);
        `max_tokens` lowers the configured limit for this request."""
        request = self._client.completions.create(
            model=self.options.model, prompt=prompt, stream=True, stop=[EOT],
            max_tokens=min(self.options.max_tokens, max_tokens or self.options.max_tokens), temperature=self.options.temperature, top_p=self.options.top_p)
        async for text in stream_text(request, self.options.base_url, lambda choice: choice.text, mark_cut=mark_cut):
            yield text

    async def complete_text(self, system: str, audio_tokens: Sequence[int]) -> str:
        """One whole reply to a system prompt and a spoken turn (used for Step-Audio-Chat ASR)."""
        from streaming_tokenizer.step_audio.interleave import render

        prompt = render_prompt([Message("system", system), Message("user", render(audio_tokens))])
        async with aclosing(self.stream_prompt(prompt)) as pieces:
            return "".join([piece async for piece in pieces])


def build(options: dict, env) -> StepAudioChatClient:
    from core.config import validate_options

    return StepAudioChatClient(validate_options(Options, "llm", options), env.scheduler)
