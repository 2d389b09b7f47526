"""Audio codes from Step-Audio-TTS-3B served by vLLM's OpenAI-compatible server.

Text is tokenized with the server's own tokenizer (POST /tokenize, cached), the prompt is sent as
token ids to /v1/completions with stream=True, and `<audio_N>` pieces are parsed out of the
streamed text. Closing the iterator closes the HTTP stream, which makes vLLM abort the request.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import aiohttp
from openai import AsyncOpenAI

from decoder.step_audio.tts_prompt import AudioTokenParser


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
    def __init__(self, base_url: str, model: str, api_key: str = "EMPTY", temperature: float = 0.7,
                 max_tokens: int = 4096, timeout_s: float = 60.0) -> None:
        self.client = AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s)
        self.model, self.temperature, self.max_tokens = model, temperature, max_tokens

    async def codes(self, prompt_ids: Sequence[int]) -> AsyncIterator[int]:
        """Yield audio codes n (LLM id - 65536) as they are generated."""
        stream = await self.client.completions.create(
            model=self.model, prompt=list(prompt_ids), max_tokens=self.max_tokens,
            temperature=self.temperature, stream=True,
            # Audio tokens are special tokens: without this vLLM drops them from the text.
            extra_body={"skip_special_tokens": False},
        )
        parser = AudioTokenParser()
        try:
            async for event in stream:
                if not event.choices:
                    continue
                for code in parser.feed(event.choices[0].text or ""):
                    yield code
        finally:
            await stream.close()

    async def close(self) -> None:
        await self.client.close()
