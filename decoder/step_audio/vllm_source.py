"""Audio codes from Step-Audio-TTS-3B served by an OpenAI-compatible completions server (vLLM).

Text is tokenized with the server's own tokenizer (POST /tokenize, cached), the prompt is sent as
token ids to /v1/completions with stream=True, and generated ids are read back from the stream
(`completion_ids.py`: `<audio_N>` text for vLLM). Closing the iterator closes the HTTP stream,
which makes vLLM abort the request.

Repetition-aware sampling (ras.py) is enforced here, client-side, by rejection: vLLM's server
cannot take a Python logits processor per request. See VLLMAudioSource.tokens().
"""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
from openai import AsyncOpenAI

from decoder.step_audio.completion_ids import IdChannel, StepAudioIds
from decoder.step_audio.ras import banned_token
from decoder.step_audio.tts_prompt import AUDIO_BASE

log = logging.getLogger(__name__)

BAN_BIAS = -100  # the most negative logit_bias the OpenAI API (and vLLM, llama.cpp) accept
MAX_REDRAWS = 3


class VLLMTokenizer:
    """Async text -> ids via vLLM's /tokenize, without special tokens; results are cached."""

    def __init__(self, base_url: str, model: str, cache_size: int = 512) -> None:
        root = base_url.rstrip("/")
        self.url = (root[:-3] if root.endswith("/v1") else root) + "/tokenize"
        self.model = model
        self._cache: dict[str, list[int]] = {}
        self._cache_size = cache_size
        self._session: aiohttp.ClientSession | None = None

    async def encode(self, text: str) -> list[int]:
        if text in self._cache:
            return self._cache[text]
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        body = {"model": self.model, "prompt": text, "add_special_tokens": False}
        async with self._session.post(self.url, json=body) as resp:
            if resp.status != 200:
                raise RuntimeError(f"{self.url}: HTTP {resp.status}: {(await resp.text())[:200]}")
            ids = list((await resp.json())["tokens"])
        if len(self._cache) >= self._cache_size:
            self._cache.pop(next(iter(self._cache)))
        self._cache[text] = ids
        return ids

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class VLLMAudioSource:
    """codes(prompt_ids) -> audio codes n; tokens(prompt_ids) -> every generated token id.

    `restarts` counts rejected draws (each one closes the stream and opens a new one).
    """

    def __init__(self, base_url: str, model: str, api_key: str = "EMPTY", temperature: float = 0.7,
                 max_tokens: int = 4096, timeout_s: float = 60.0, *, ras: bool = True,
                 ids: IdChannel | None = None, extra_body: dict[str, Any] | None = None) -> None:
        self.client = AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s)
        self.model, self.temperature, self.max_tokens = model, temperature, max_tokens
        self.ras = ras
        self.ids: IdChannel = ids or StepAudioIds()
        self.extra_body = {**self.ids.request_fields, **(extra_body or {})}
        self.restarts = 0

    async def codes(self, prompt_ids: Sequence[int]) -> AsyncIterator[int]:
        """Yield audio codes n (LLM id - 65536) as they are generated."""
        async for token in self.tokens(prompt_ids):
            if token >= AUDIO_BASE:
                yield token - AUDIO_BASE

    async def _request(self, history: list[int], max_tokens: int, stream: bool, **kw):
        return await self.client.completions.create(
            model=self.model, prompt=await self.ids.prompt(history), max_tokens=max_tokens,
            temperature=self.temperature, stream=stream, extra_body=self.extra_body, **kw)

    async def tokens(self, prompt_ids: Sequence[int]) -> AsyncIterator[int]:
        """Generated ids, with the repetition-aware rule enforced exactly, by rejection.

        The rule (like the reference's logits processor) looks at the last 10 ids of prompt +
        generated. A streamed id equal to ras.banned_token(history before it) is a rejected draw:
        the stream is closed (the server aborts the request), ONE token is drawn for the same
        history with logit_bias {banned: -100}, and streaming resumes from the longer history.

        Why this is exact: the server drew t from p (the tempered softmax). If t != b it is kept,
        with probability p(t); if t == b we redraw from q = p with b removed and renormalised,
        q(t) = p(t) / (1 - p(b)). So P(t) = p(t) + p(b) q(t) = q(t) for every t != b: exactly
        the reference's distribution with b's logit at -inf. Two caveats: -100 is a bias, not
        -inf (b stays possible if its logit leads by ~100; such a draw is detected and redrawn),
        and the argument assumes the server samples from the full distribution; with top-k /
        top-p / min-p truncation the first draw's distribution is truncated with b still in the
        set, so the result is close to, not equal to, truncation after banning.
        With prefix caching (vLLM's automatic prefix caching, llama.cpp's prompt cache) a restart
        re-uses the cached prompt and costs little prefill.
        """
        history = list(prompt_ids)
        left = self.max_tokens
        while left > 0:
            rejected = None
            stream = await self._request(history, left, stream=True)
            reader = self.ids.reader()
            try:
                async for event in stream:
                    if not event.choices:
                        continue
                    for token in await reader.feed(event.choices[0]):
                        ban = banned_token(history) if self.ras else None
                        if token == ban:
                            rejected = ban
                            break
                        history.append(token)
                        left -= 1
                        yield token
                    if rejected is not None:
                        break
            finally:
                await stream.close()
            if rejected is None:
                return  # the server ended the reply (end token or max_tokens)
            self.restarts += 1
            log.debug("repetition-aware sampling: rejected %d after %d ids; restart %d",
                      rejected, len(history), self.restarts)
            token = await self._redraw(history, rejected)
            if token is None:
                return
            history.append(token)
            left -= 1
            yield token

    async def _redraw(self, history: list[int], banned: int) -> int | None:
        """One token for `history` with `banned` suppressed; None if the model ended the reply."""
        for _ in range(MAX_REDRAWS):
            resp = await self._request(history, 1, stream=False, logit_bias={str(banned): BAN_BIAS})
            if not resp.choices:
                return None
            ids = await self.ids.reader().feed(resp.choices[0])
            if not ids:
                return None  # the end token (not printed), or text the id channel does not carry
            if ids[0] != banned:
                return ids[0]
        raise RuntimeError(f"token {banned} drawn {MAX_REDRAWS} times despite logit_bias {BAN_BIAS}")

    async def close(self) -> None:
        await self.client.close()
        await self.ids.close()
