"""Audio codes from Step-Audio-TTS-3B run in-process with transformers (no vLLM server).

As the reference does: AutoModelForCausalLM from the model directory (trust_remote_code: the
model ships its own Step1 modeling code; local_files_only: nothing is downloaded), sampling at
temperature 0.7 with the repetition-aware logits processor (ras.py, window over prompt +
generated ids). generate() runs in a one-thread pool, so there is one model per server and
concurrent replies queue instead of fighting over the CPU/GPU. Ids reach the async caller as they
are produced (a streamer posting to the event loop); closing the iterator sets a flag that a
stopping criterion checks before every new token, so generation ends within one forward step.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList, StoppingCriteria,
                          StoppingCriteriaList)
from transformers.generation.streamers import BaseStreamer

from decoder.step_audio.ras import RepetitionAwareLogitsProcessor
from decoder.step_audio.tts_prompt import AUDIO_BASE

log = logging.getLogger(__name__)
_END = object()


class _LoopStreamer(BaseStreamer):
    """generate() calls put() with the prompt first, then with each new token (worker thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        self.loop, self.queue = loop, queue
        self.prompt_seen = False
        self.produced = 0
        self.thread_name = ""

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            self.thread_name = threading.current_thread().name
            return
        for token in value.reshape(-1).tolist():
            self.produced += 1
            self.loop.call_soon_threadsafe(self.queue.put_nowait, int(token))

    def end(self) -> None:
        pass  # _generate() posts the end itself, also when generate() raises


class _StopWhenSet(StoppingCriteria):
    def __init__(self, flag: threading.Event) -> None:
        self.flag = flag

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.flag.is_set(), dtype=torch.bool, device=input_ids.device)


class HFAudioSource:
    """codes(prompt_ids) -> audio codes n; tokens(prompt_ids) -> every generated id (end token too)."""

    def __init__(self, model_dir: str | Path, *, temperature: float = 0.7, max_new_tokens: int = 4096,
                 ras: bool = True, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 seed: int | None = None) -> None:
        path = Path(model_dir).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"decoder.options.llm_model_dir: no config.json in {path} "
                                    "(expected the Step-Audio-TTS-3B directory)")
        self.model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, local_files_only=True,
                                                          dtype=dtype).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True, local_files_only=True)
        self.device, self.temperature, self.max_new_tokens = device, temperature, max_new_tokens
        self.ras, self.seed = ras, seed
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="step-audio-tts-llm")
        self._encoded: dict[str, list[int]] = {}
        self.last_streamer: _LoopStreamer | None = None  # for tests and debugging

    async def encode(self, text: str) -> list[int]:
        """Text -> ids with the model's tokenizer, no special tokens (microseconds: runs inline)."""
        if text not in self._encoded:
            if len(self._encoded) > 512:
                self._encoded.pop(next(iter(self._encoded)))
            self._encoded[text] = list(self.tokenizer.encode(text, add_special_tokens=False))
        return self._encoded[text]

    def _generate(self, prompt_ids: list[int], streamer: _LoopStreamer, stop: threading.Event) -> None:
        try:
            if not stop.is_set():  # else: cancelled while queued behind another reply
                self._run(prompt_ids, streamer, stop)
        except Exception as exc:  # noqa: BLE001 - handed to the consumer
            streamer.loop.call_soon_threadsafe(streamer.queue.put_nowait, exc)
        finally:
            streamer.loop.call_soon_threadsafe(streamer.queue.put_nowait, _END)

    def _run(self, prompt_ids: list[int], streamer: _LoopStreamer, stop: threading.Event) -> None:
        processors = LogitsProcessorList([RepetitionAwareLogitsProcessor()] if self.ras else [])
        if self.seed is not None:
            torch.manual_seed(self.seed)
        with torch.inference_mode():
            self.model.generate(torch.tensor([prompt_ids], dtype=torch.long, device=self.device),
                                attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long, device=self.device),
                                do_sample=True, temperature=self.temperature, max_new_tokens=self.max_new_tokens,
                                logits_processor=processors, stopping_criteria=StoppingCriteriaList([_StopWhenSet(stop)]),
                                streamer=streamer)

    async def tokens(self, prompt_ids: Sequence[int]) -> AsyncIterator[int]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        streamer = self.last_streamer = _LoopStreamer(loop, queue)
        stop = threading.Event()
        job = loop.run_in_executor(self._pool, self._generate, list(prompt_ids), streamer, stop)
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            stop.set()
            # Wait for the worker (at most one forward step) so the next reply starts on a free thread.
            await asyncio.gather(job, return_exceptions=True)

    async def codes(self, prompt_ids: Sequence[int]) -> AsyncIterator[int]:
        async for token in self.tokens(prompt_ids):
            if token >= AUDIO_BASE:
                yield token - AUDIO_BASE

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
