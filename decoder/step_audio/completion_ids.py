"""How token ids travel through an OpenAI-compatible /v1/completions server.

The repetition-aware rule (ras.py) needs the exact ids of the prompt and of every generated token,
and servers differ in how they carry them:
  * vLLM serving Step-Audio-TTS-3B (`StepAudioIds`): the prompt goes as a list of ids; audio tokens
    come back as `<audio_N>` text (id 65536 + N), kept because skip_special_tokens is false.
  * llama-cpp-python's server (`LlamaCppIds`): prompts must be text (ids -> /extras/detokenize),
    and with `logprobs` set it streams exactly one event per token, whose text maps back to its id
    through /extras/tokenize. This lets the same VLLMAudioSource run against the bundled llama.cpp
    server with an ordinary model (tests/test_step_audio_sources.py).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import aiohttp

from decoder.step_audio.tts_prompt import AUDIO_BASE, AudioTokenParser


class IdReader(Protocol):
    async def feed(self, choice: Any) -> list[int]:
        """Ids of the tokens carried by one streamed (or whole) completion choice."""


class IdChannel(Protocol):
    request_fields: dict[str, Any]  # sent with every completions request

    async def prompt(self, ids: Sequence[int]) -> list[int] | str: ...

    def reader(self) -> IdReader: ...  # one per response: readers may hold a partial token

    async def close(self) -> None: ...


class _AudioReader:
    def __init__(self) -> None:
        self._parser = AudioTokenParser()

    async def feed(self, choice: Any) -> list[int]:
        return [AUDIO_BASE + n for n in self._parser.feed(choice.text or "")]


class StepAudioIds:
    """vLLM + Step-Audio-TTS-3B. Only audio tokens are seen: the model emits nothing else before its
    end-of-turn token (which vLLM does not print), so the id history stays exact."""

    # Audio tokens are special tokens: without this vLLM drops them from the text.
    request_fields: dict[str, Any] = {"skip_special_tokens": False}

    async def prompt(self, ids: Sequence[int]) -> list[int]:
        return list(ids)

    def reader(self) -> IdReader:
        return _AudioReader()

    async def close(self) -> None:
        return None


class LlamaCppIds:
    """llama-cpp-python's OpenAI-compatible server (text prompts, /extras/(de)tokenize)."""

    # logprobs makes its stream carry one event per token (no merging of multi-byte pieces).
    request_fields: dict[str, Any] = {"logprobs": 1}

    def __init__(self, base_url: str) -> None:
        root = base_url.rstrip("/")
        self.root = root[:-3] if root.endswith("/v1") else root
        self._piece_ids: dict[str, int] = {}
        self._session: aiohttp.ClientSession | None = None

    async def _post(self, path: str, body: dict) -> dict:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        async with self._session.post(self.root + path, json=body) as resp:
            if resp.status != 200:
                raise RuntimeError(f"{self.root}{path}: HTTP {resp.status}: {(await resp.text())[:200]}")
            return await resp.json()

    async def prompt(self, ids: Sequence[int]) -> str:
        # The server re-tokenizes this text; callers that need the server to see exactly `ids`
        # should check the round trip with tokenize() (the tests do).
        return (await self._post("/extras/detokenize", {"tokens": list(ids)}))["text"]

    async def tokenize(self, text: str) -> list[int]:
        return list((await self._post("/extras/tokenize", {"input": text}))["tokens"])

    async def piece_id(self, piece: str) -> int:
        if piece not in self._piece_ids:
            ids = await self.tokenize(piece)
            if len(ids) != 1:
                raise ValueError(f"token text {piece!r} does not map back to one token id ({ids})")
            self._piece_ids[piece] = ids[0]
        return self._piece_ids[piece]

    def reader(self) -> IdReader:
        return _LlamaCppReader(self)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class _LlamaCppReader:
    def __init__(self, channel: LlamaCppIds) -> None:
        self._channel = channel

    async def feed(self, choice: Any) -> list[int]:
        pieces = choice.logprobs.tokens if choice.logprobs is not None and choice.logprobs.tokens else []
        if not pieces and choice.text:
            raise ValueError("llama.cpp stream event without logprobs tokens: request logprobs")
        return [await self._channel.piece_id(p) for p in pieces]
