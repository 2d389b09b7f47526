"""How likely the user's words so far end their turn, as the chat model reads them.

A chat model has learned where a user's message ends: its probability of the end-of-message token
(`<|im_end|>` in SmolLM2's template) right after the user's words is a text end-of-turn signal,
the idea behind LiveKit's turn detector (a SmolLM2-135M fine-tuned for it). Ours asks the model
that answers anyway, untuned. On our corpora it separates what the audio model cannot: a first
sentence after which the speaker goes on ("I need a new laptop for work." ≈ 0.01) from a finished
request ("Tell me one interesting fact about the moon." ≈ 0.8); docs/turn-taking.md.

llama.cpp's server only (its native endpoints beside the OpenAI ones): `/apply-template` renders
the conversation with the model's own chat template, `/tokenize` gives the token that follows the
user's words there, `/completion` with `n_probs` the next-token probabilities after them (the
conversation's prefix is in the prompt cache after the turn's warm-up, so only the words are
evaluated: a few ms). Any other server, or any failure, gives None: the audio model decides alone.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import aiohttp

from llm.base import Message, chat_message

log = logging.getLogger(__name__)
TOP_TOKENS = 100  # the end token is looked for among the most likely next tokens; absent: p ≈ 0


class TurnEndScorer:
    def __init__(self, timeout_s: float = 2.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._http: aiohttp.ClientSession | None = None  # made in the event loop, at first use
        self._end_token: dict[str, int] = {}  # per server root: the token after a user message
        self._unsupported: set[str] = set()

    async def probability(self, base_url: str, history: Sequence[Message], text: str) -> float | None:
        """P(the end-of-message token right after `text` as the user's next message), or None."""
        root = base_url.rstrip("/").removesuffix("/v1")
        if root in self._unsupported or not text.strip():
            return None
        # As the reply's request will send them (llm.base.chat_message), so that its prompt starts
        # with this one and finds it cached.
        messages = [chat_message(m) for m in history] + [{"role": "user", "content": text}]
        try:
            rendered = (await self._post(root, "/apply-template", {"messages": messages}))["prompt"]
            cut = rendered.rfind(text)
            if cut < 0:
                return None
            prefix, suffix = rendered[:cut + len(text)], rendered[cut + len(text):]
            end = self._end_token.get(root)
            if end is None:
                tokens = (await self._post(root, "/tokenize", {"content": suffix}))["tokens"]
                if not tokens:
                    return None
                end = self._end_token[root] = tokens[0]
            top = await self._next_token_probs(root, prefix)
        except aiohttp.ClientResponseError as exc:
            if exc.status == 404:  # not llama.cpp's server: do not ask again
                log.info("%s has no /apply-template: no text end-of-turn signal", root)
                self._unsupported.add(root)
            return None
        except (aiohttp.ClientError, TimeoutError, KeyError, IndexError, TypeError, ValueError) as exc:
            log.debug("text end-of-turn probability failed: %s", exc)
            return None
        return next((math.exp(t["logprob"]) for t in top if t.get("id") == end), 0.0)

    async def _next_token_probs(self, root: str, prompt: str) -> list[dict]:
        """The most likely next tokens after `prompt` with their log-probabilities. The server
        reports them only with text it can send: when the likeliest token is part of a character
        (Chinese is often split into byte tokens), it has none until the character is complete,
        so then a few more tokens are generated."""
        for n_predict in (1, 4):
            out = await self._post(root, "/completion", {"prompt": prompt, "n_predict": n_predict, "n_probs": TOP_TOKENS,
                                                         "temperature": 0.0, "cache_prompt": True})
            if out.get("completion_probabilities"):
                return out["completion_probabilities"][0]["top_logprobs"]
        raise ValueError("the server reported no token probabilities")

    async def _post(self, root: str, path: str, body: dict) -> dict:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        async with self._http.post(root + path, json=body, raise_for_status=True) as response:
            return await response.json()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
