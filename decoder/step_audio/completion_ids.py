"""How token ids travel through an OpenAI-compatible /v1/completions server.

The repetition-aware rule (ras.py) needs the exact ids of the prompt and of every generated token,
and servers differ in how they carry them:
  * vLLM serving Step-Audio-TTS-3B (`StepAudioIds`): the prompt goes as a list of ids; audio tokens
    come back as `<audio_N>` text (id 65536 + N), kept because skip_special_tokens is false.
  * llama.cpp's llama-server (`LlamaServerIds`): the prompt goes as a list of ids; with `logprobs`
    set every streamed event is one token and carries its id. This lets the same VLLMAudioSource
    run against the bundled llama.cpp server with an ordinary model (tests/test_step_audio_ras.py).
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


class LlamaServerIds:
    """How token ids travel through llama.cpp's llama-server. Prompts go as lists of ids, which
    /v1/completions takes as they are. With `logprobs` set every streamed event is one token and
    carries its id (`logprobs.content[0].id`, an extra field to the OpenAI schema). A token that is
    only part of a UTF-8 character is not streamed on its own: its text comes with the next
    token's event, and only that token's id; such an event (text longer than its token's own
    piece) is an error, as the id history would no longer be exact."""

    request_fields: dict[str, Any] = {"logprobs": 1}

    def __init__(self, base_url: str) -> None:
        root = base_url.rstrip("/")
        self.root = root[:-3] if root.endswith("/v1") else root
        self._pieces: dict[int, str] = {}
        self._session: aiohttp.ClientSession | None = None

    async def _post(self, path: str, body: dict) -> dict:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        async with self._session.post(self.root + path, json=body) as resp:
            if resp.status != 200:
                raise RuntimeError(f"{self.root}{path}: HTTP {resp.status}: {(await resp.text())[:200]}")
            return await resp.json()

    async def prompt(self, ids: Sequence[int]) -> list[int]:
        return list(ids)

    async def tokenize(self, text: str) -> list[int]:
        return list((await self._post("/tokenize", {"content": text, "add_special": False}))["tokens"])

    async def piece(self, token: int) -> str:
        if token not in self._pieces:
            self._pieces[token] = (await self._post("/detokenize", {"tokens": [token]}))["content"]
        return self._pieces[token]

    def reader(self) -> "_LlamaServerReader":
        return _LlamaServerReader(self)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class _LlamaServerReader:
    def __init__(self, channel: LlamaServerIds) -> None:
        self._channel = channel

    async def feed(self, choice: Any) -> list[int]:
        content = getattr(choice.logprobs, "content", None) if choice.logprobs is not None else None
        if not content:
            if choice.text:
                raise ValueError("llama-server event without logprobs: request logprobs")
            return []  # the end of the stream (or the end token, which is not printed)
        token = int(content[0]["id"])
        if len(content) == 1 and choice.text and choice.text != await self._channel.piece(token):
            raise ValueError(f"event text {choice.text!r} is more than token {token}'s own piece: "
                             "an earlier token (part of a UTF-8 character) was not streamed on its own")
        return [int(c["id"]) for c in content]
