"""Any OpenAI-compatible chat endpoint, streamed, through the official `openai` SDK.

With base_url null the client starts the bundled llama.cpp server (llm/llama_server.py) on
loopback in start() and stops it in close(). Closing a stream early (aclose() or cancelling the
task that iterates it) closes its HTTP response, and the server stops generating when it notices
the disconnect at its next token: a discarded speculation costs almost nothing.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from pathlib import Path

import openai
from pydantic import BaseModel, ConfigDict, Field

from core.scheduler import Scheduler, WorkDropped, ticket_now
from llm.base import Message, ReplyCut, ToolCallDelta, chat_message
from llm.llama_server import LlamaServer
from llm.tool_text import calls_in_text
from llm.turn_end import TurnEndScorer

log = logging.getLogger(__name__)
TURN_END_ALONE_S = 3.0  # the words are read only if no other session had model work this long (as Whisper's solo_idle_s)


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_url: str | None = Field(None, description="e.g. http://127.0.0.1:8000/v1; null: start the bundled server")
    model: str = Field("smollm2-135m-q4_0", description="model name sent to the server; with the bundled server also "
                                                  "the embedded asset it loads")
    api_key: str = "sk-local"
    max_tokens: int = Field(120, ge=1)
    temperature: float = Field(0.6, ge=0, le=2)
    timeout: float = Field(30.0, gt=0, description="seconds, per request (connect and each read)")
    max_retries: int = Field(0, ge=0, description="retries cost a turn's latency: none by default")
    text_tool_calls: bool = Field(True, description="a reply that is only a tool call written as JSON text "
                                                    "(small models do that) becomes a tool call (llm/tool_text.py)")
    after_tool_instruction: str | None = Field(
        None, description="a system message added after a tool's result when no tools are offered (the answer "
                          "to speak): small models otherwise write the call again instead of saying the result")
    warm_prefix: bool = Field(True, description="at the start of each user turn, send the conversation so far "
                                                "(1 token) so the server's prompt cache holds it")
    affinity_header: str | None = Field(None, description="send each request's session id in this HTTP header "
                                                          "(e.g. X-Session-Id): a balancer hashing it sends a "
                                                          "conversation to one LLM replica, whose prefix cache "
                                                          "holds it (docs/model-tier.md)")
    concurrency: int | None = Field(None, ge=1, description="requests in flight at once (the scheduler's \"llm\" "
                                                           "lane; more wait, most urgent first); null: n_parallel")
    # The bundled server (base_url null, llama.cpp's llama-server) only:
    model_path: str | None = Field(None, description="a .gguf file instead of the asset named by model")
    turn_end_text: bool = Field(True, description="at a pause, ask the LLM server how likely the user's words "
                                "so far end their turn (llama.cpp's server only; llm/turn_end.py)")
    # SmolLM2-135M reads English only: after a complete Mandarin question its P(end) is ~0, which
    # would hold every Chinese turn's floor. A model that reads more languages can list them.
    turn_end_languages: list[str] | None = Field(["en"], description="transcript languages whose words are scored "
                                                 "(the model must read them); null: every language")
    n_parallel: int = Field(8, ge=1, description="slots: requests decoded together (continuous batching); "
                                                 "more concurrent requests queue")
    n_ctx: int = Field(2048, ge=256, description="context of each slot in tokens (prompt + reply); the "
                                                 "server's KV cache holds n_parallel * n_ctx")
    n_threads: int | None = Field(None, ge=1, description="generation threads; null: all cores but one")
    n_threads_batch: int | None = Field(None, ge=1, description="prompt threads; null: as n_threads")
    prompt_cache_mb: int = Field(256, ge=0, description="RAM cache of prompt states pushed out of their slot "
                                                        "(each session keeps its prefix); 0: off")
    cache_reuse: int = Field(64, ge=0, description="reuse cached chunks of at least this many tokens by "
                                                   "shifting them (a history that dropped its oldest turns); 0: off")
    server_binary: str | None = Field(None, description="a llama-server executable; null: the one `make setup` "
                                                        "built into <cache_dir>/bin")
    startup_timeout_s: float = Field(180.0, gt=0)
    log_path: str | None = Field(None, description="server log; null: <cache_dir>/logs/llama-server.log")


class LLMError(RuntimeError):
    """The LLM request failed; the message says which server and why (shown in an error event)."""


class LLMUnavailableError(LLMError, ConnectionError):
    """The LLM server cannot be reached."""


class OpenAIChatClient:
    """Shared per server; every stream() is one streamed chat completion."""

    def __init__(self, options: Options | None = None, server: LlamaServer | None = None,
                 scheduler: Scheduler | None = None) -> None:
        self.options = options or Options()
        self.server = server
        # Every request holds one of the server's slots while it streams; waiting ones go most
        # urgent first (a reply the caller waits for before a speculation before a warm-up).
        self.scheduler = scheduler or Scheduler()
        self.lane = self.scheduler.lane("llm", self.options.concurrency or self.options.n_parallel, serial=False)
        self._client: openai.AsyncOpenAI | None = None
        self._turn_end = TurnEndScorer(min(self.options.timeout, 2.0))
        self._start_lock = asyncio.Lock()
        if self.options.base_url is not None:
            self._client = self._make_client(self.options.base_url)

    def _make_client(self, base_url: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=base_url, api_key=self.options.api_key,
                                  timeout=self.options.timeout, max_retries=self.options.max_retries)

    @property
    def base_url(self) -> str | None:
        if self.options.base_url is not None:
            return self.options.base_url
        return self.server.base_url if self.server is not None and self.server.running else None

    @property
    def available(self) -> bool:
        """False while the bundled server is down (being restarted by its supervisor): /readyz."""
        return self.server is None or self.server.running

    @property
    def restarts(self) -> int:
        """How often the bundled server was restarted after it died (/metrics)."""
        return self.server.restarts if self.server is not None else 0

    async def start(self) -> None:
        """Start the bundled server if this client has one (no-op with a base_url)."""
        async with self._start_lock:
            if self._client is None:
                if self.options.base_url is not None:
                    self._client = self._make_client(self.options.base_url)
                elif self.server is None:
                    raise LLMError("llm: no base_url and no bundled server to start")
                else:
                    self._client = self._make_client(await self.server.start())

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()
        await self._turn_end.close()
        if self.server is not None:
            await self.server.stop()

    async def stream(self, messages: Sequence[Message], tools: Sequence[dict] | None = None,
                     tool_choice: str | dict | None = None, max_tokens: int | None = None
                     ) -> AsyncIterator[str | ToolCallDelta | ReplyCut]:
        if self._client is None:
            await self.start()
        assert self._client is not None
        # Closing this generator closes the HTTP stream and releases the slot at once.
        async with self.lane.slot(), aclosing(self._stream(messages, tools, tool_choice, max_tokens)) as pieces:
            async for piece in pieces:
                yield piece

    async def _stream(self, messages: Sequence[Message], tools: Sequence[dict] | None,
                      tool_choice: str | dict | None, max_tokens: int | None = None
                      ) -> AsyncIterator[str | ToolCallDelta | ReplyCut]:
        assert self._client is not None
        extra: dict = {}
        if tools:  # chat-completions tools: {type: function, function: {name, description, parameters}}
            extra["tools"] = list(tools)
            if tool_choice is not None:
                extra["tool_choice"] = tool_choice
        chat = [chat_message(m) for m in messages]
        if not tools and self.options.after_tool_instruction and messages and messages[-1].role == "tool":
            chat.append({"role": "system", "content": self.options.after_tool_instruction})
        request = self._client.chat.completions.create(
            model=self.options.model, messages=chat,
            stream=True, max_tokens=min(self.options.max_tokens, max_tokens or self.options.max_tokens),
            temperature=self.options.temperature,
            **self._affinity(), **extra)
        pieces = stream_text(request, self.base_url or "the LLM server", _pieces_of, mark_cut=True)
        if tools and self.options.text_tool_calls:
            pieces = calls_in_text(pieces, [t["function"]["name"] for t in tools])
        elif self.options.text_tool_calls:
            # Offered no tools (the answer after a tool round), a small model may still write a
            # call as JSON: it is not read aloud, and it is no call either (none may be made now).
            pieces = _without_calls(calls_in_text(pieces, []))
        async with aclosing(pieces) as pieces:
            async for piece in pieces:
                yield piece

    def _affinity(self) -> dict:
        """The session's id in `affinity_header` (the scheduler's ticket says whose work this is)."""
        session = ticket_now().session
        if not self.options.affinity_header or not session:
            return {}
        return {"extra_headers": {self.options.affinity_header: session}}

    async def warm(self, history: Sequence[Message]) -> None:
        """Evaluate `history` + an empty user message, generating one token, so that the server
        caches the prefix every prompt of the coming turn starts with (the prompt diverges only at
        the user's words). The rest of that request is thrown away."""
        if not self.options.warm_prefix or self._client is None:
            return
        messages = [{"role": m.role, "content": m.content} for m in history] + [{"role": "user", "content": ""}]
        try:
            async with self.lane.slot():  # a warm-up waits behind real work, and is dropped if superseded
                await self._client.chat.completions.create(model=self.options.model, messages=messages,
                                                           max_tokens=1, temperature=0.0, **self._affinity())
        except WorkDropped:
            pass
        except openai.APIError as exc:  # the turn's own request reports real failures
            log.debug("prefix warm-up failed: %s", exc)

    async def turn_end_probability(self, history: Sequence[Message], text: str,
                                   language: str | None = None) -> float | None:
        """P(the user's turn ends after `text`), as the model reads it (llm/turn_end.py); None when
        off, in a language it does not read, unsupported by the server, or failed: the end-of-turn
        policy then goes without it."""
        base_url, languages = self.base_url, self.options.turn_end_languages
        if not self.options.turn_end_text or base_url is None:
            return None
        if language is not None and languages is not None and language not in languages:
            return None
        # Alone, the reply is ready about when a doubted turn's shorter wait ends, and reading first
        # costs little (the reply then finds the words cached). With other sessions at work the
        # reply comes after the wait anyway and the reading only adds its own time, slowed by their
        # generation (4 callers: +110 ms to every reply; docs/turn-taking.md): skip it then.
        if self.scheduler.sessions_at_work(TURN_END_ALONE_S) - {ticket_now().session}:
            return None
        try:
            async with self.lane.slot():  # as urgent as the pause's speculation that asks
                return await self._turn_end.probability(base_url, history, text)
        except WorkDropped:
            return None


async def _without_calls(pieces: AsyncIterator[str | ToolCallDelta | ReplyCut]) -> AsyncIterator[str | ReplyCut]:
    async with aclosing(pieces):
        async for piece in pieces:
            if isinstance(piece, ToolCallDelta):
                if piece.name:
                    log.warning("the model wrote a call of %r with no tools offered: not spoken", piece.name)
                continue
            yield piece


async def stream_text(request, where: str, text_of, mark_cut: bool = False) -> AsyncIterator[str]:
    """Stream an OpenAI-compatible request (`request`: the awaitable create(..., stream=True)),
    yielding `text_of(choice)` (or each piece of the list it returns) when non-empty, with the server's
    failures as LLMError. `mark_cut`: end with a ReplyCut if the server stopped at max_tokens."""
    try:
        response = await request
    except openai.APIConnectionError as exc:  # includes timeouts
        raise LLMUnavailableError(f"{where} is unreachable: {exc}") from exc
    except openai.APIStatusError as exc:
        raise LLMError(f"{where} answered {exc.status_code}: {exc.message}") from exc
    try:
        async for chunk in response:
            if chunk.choices and (text := text_of(chunk.choices[0])):
                for piece in text if isinstance(text, list) else [text]:
                    yield piece
            if mark_cut and chunk.choices and chunk.choices[0].finish_reason == "length":
                yield ReplyCut()
    except openai.APIError as exc:
        raise LLMError(f"{where} failed mid-stream: {exc}") from exc
    finally:
        # Runs on aclose() and on cancellation too: dropping the connection is what tells the
        # server to stop generating (vLLM aborts the request).
        await response.close()


def _pieces_of(choice) -> list[str | ToolCallDelta]:
    """A streamed choice's text and tool-call pieces, in that order."""
    delta = choice.delta
    out: list[str | ToolCallDelta] = [delta.content] if delta.content else []
    for call in delta.tool_calls or []:
        fn = call.function
        out.append(ToolCallDelta(call.index, call.id or "", (fn.name or "") if fn else "",
                                 (fn.arguments or "") if fn else ""))
    return out


def _resolve_model(name_or_path: str, cache_dir: Path) -> Path:
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return path
    from core import assets  # lazy: only the bundled server needs the asset table

    return assets.ensure(name_or_path, cache_dir)


def bundled_server(opts: Options, cache_dir: Path) -> LlamaServer | None:
    """The llama-server to start for these options (None when base_url points elsewhere). Also
    used by `serve --workers N` (realtime/cluster/) to start one for all its workers."""
    if opts.base_url is not None:
        return None
    cache_dir = Path(cache_dir).expanduser()
    log_path = Path(opts.log_path).expanduser() if opts.log_path else cache_dir / "logs" / "llama-server.log"
    return LlamaServer(_resolve_model(opts.model_path or opts.model, cache_dir), opts.model,
                       n_parallel=opts.n_parallel, n_ctx=opts.n_ctx, n_threads=opts.n_threads,
                       n_threads_batch=opts.n_threads_batch, prompt_cache_mb=opts.prompt_cache_mb,
                       cache_reuse=opts.cache_reuse, cache_dir=cache_dir, log_path=log_path,
                       binary=Path(opts.server_binary).expanduser() if opts.server_binary else None,
                       startup_timeout_s=opts.startup_timeout_s)


def build(options: dict, env) -> OpenAIChatClient:
    from core.config import validate_options

    opts = validate_options(Options, "llm", options)
    return OpenAIChatClient(opts, bundled_server(opts, env.cache_dir), env.scheduler)
