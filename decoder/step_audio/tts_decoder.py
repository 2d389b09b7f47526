"""The Step-Audio decoder stage: LLM text -> clauses -> TTS-3B audio codes -> flow -> HiFT -> audio.

One instance per server holds the models (shared by every session); synthesize() is per reply.
Per clause: parse instruction tags, build the TTS-3B prompt, stream audio codes from the code
source (vLLM or in-process transformers), and run flow + HiFT steps off the event loop as soon as a token chunk is complete,
so the first audio leaves after the first token chunk. Cancelling the iterator (barge-in) stops
the code stream (vLLM aborts the request) and drops the reply's caches.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from core.scheduler import Scheduler
from decoder.base import AudioChunk
from decoder.clauses import clauses
from decoder.step_audio import tags as tagmod
from decoder.step_audio.loader import CosyVoiceModels
from decoder.step_audio.speakers import Speaker, WavToCodes, clone_speaker
from decoder.step_audio.streaming import Prompt, ReplySynth, StreamConfig
from decoder.step_audio.tts_prompt import build_prompt_ids, system_prompt

log = logging.getLogger(__name__)


class CodeSource(Protocol):
    def codes(self, prompt_ids: Sequence[int]) -> AsyncIterator[int]: ...


AsyncEncode = Callable[[str], Awaitable[list[int]]]


@dataclass
class Voice:
    models: CosyVoiceModels
    speakers: dict[str, Speaker] = field(default_factory=dict)


class StepAudioDecoder:
    def __init__(self, common: Voice, source: CodeSource, encode: AsyncEncode, *, music: Voice | None = None,
                 speaker: str = "", stream: StreamConfig | None = None, volume: float = 1.0,
                 seed: int | None = None, workers: int = 2, scheduler: Scheduler | None = None) -> None:
        self.common, self.music, self.source, self.encode = common, music, source, encode
        self.speaker = speaker
        self.stream_cfg = stream or StreamConfig()
        self.volume = volume
        self.seed = seed
        self.sample_rate = common.models.hp.hift.sampling_rate
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="step-audio-decoder")
        # Flow + HiFT steps of all sessions, most urgent first (the scheduler's "tts" lane).
        self._lane = (scheduler or Scheduler()).lane("tts", workers, executor=self._pool)
        self._replies = 0
        # Prompt codes of a recording (the speech tokenizer), for clone_voice(); set by the factory.
        self.prompt_codes: WavToCodes | None = None

    async def _prompt_ids(self, tagged: tagmod.TaggedText, spk: Speaker | None, spk_name: str) -> list[int]:
        texts = ["\n", "human\n", "assistant\n", "system\n" + system_prompt(tagged, spk_name), "\n" + tagged.text]
        if spk is not None:
            texts.append("\n" + spk.prompt_text)
        encoded = dict(zip(texts, await asyncio.gather(*(self.encode(t) for t in texts))))
        return build_prompt_ids(encoded.__getitem__, tagged, spk_name,
                                spk.prompt_text if spk else "", spk.prompt_codes if spk else ())

    @property
    def voices(self) -> list[str]:
        """The speakers of decoder.speaker_dir (what `speaker` / speak(voice=...) may name)."""
        return sorted(self.common.speakers)

    def _voice_for(self, tagged: tagmod.TaggedText, name: str | None = None,
                   clone: Speaker | None = None) -> tuple[Voice, Speaker | None]:
        voice = self.common
        if tagged.music:
            if self.music is None:
                log.warning("(%s) needs the CosyVoice-300M-25Hz-Music model; using the common one", tagged.music)
            else:
                voice = self.music
        if clone is not None:
            return voice, clone
        name = self.speaker if name is None else name
        spk = voice.speakers.get(f"{name}{tagged.music}") or voice.speakers.get(name)
        return voice, spk

    def _pcm(self, wav: torch.Tensor) -> np.ndarray:
        x = wav.numpy() * self.volume
        return (np.clip(x, -1.0, 1.0) * 32767).astype(np.int16)

    async def speak(self, text: str, voice: str | None = None, clone: Speaker | None = None) -> AsyncIterator[AudioChunk]:
        """The whole text as ONE TTS-3B generation, as the reference's tts.py does (the offline
        `tts` command): its leading tags apply to all of it, whereas synthesize() cuts a reply
        into clauses for latency and a clause's tags apply to that clause only. `voice` names a
        speaker of speaker_dir instead of the configured one; `clone` is a voice made from a
        prompt recording (clone_voice())."""
        if voice is not None and voice not in self.common.speakers:
            raise KeyError(voice)
        async with aclosing(self._speak(text, voice, clone)) as audio:
            async for chunk in audio:
                yield chunk

    def clone_voice(self, audio: np.ndarray, rate: int, prompt_text: str) -> Speaker:
        """A voice cloned from a prompt recording (float mono audio at any rate) and what it says.
        Needs the speech tokenizer for the prompt codes (tokenizer_model_dir); loaded on first use."""
        if self.prompt_codes is None:
            raise ValueError("cloning a voice from a prompt recording needs the Step-Audio speech tokenizer: "
                             "set decoder.tokenizer_model_dir (the Step-Audio-Tokenizer directory)")
        return clone_speaker(self.common.models, audio, rate, prompt_text, self.prompt_codes)

    async def _speak(self, clause: str, name: str | None = None, clone: Speaker | None = None) -> AsyncIterator[AudioChunk]:
        tagged = tagmod.parse(clause)
        if tagged.unknown:
            log.info("unknown instruction tags %s (passed to the model as written)", tagged.unknown)
        voice, spk = self._voice_for(tagged, name, clone)
        ids = await self._prompt_ids(tagged, spk, spk.name if spk else "")
        hp = voice.models.hp
        prompt = spk.flow_prompt if spk else Prompt.empty(hp.flow.spk_embed_dim, hp.flow.output_size)
        self._replies += 1
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
        synth = ReplySynth(voice.models.flow, voice.models.hift, prompt, self.stream_cfg, seed=seed + self._replies)
        queue: asyncio.Queue = asyncio.Queue()

        async def produce() -> None:
            try:
                async for code in self.source.codes(ids):
                    queue.put_nowait(code)
                queue.put_nowait(None)
            except Exception as exc:  # noqa: BLE001 - handed to the consumer
                queue.put_nowait(exc)

        producer = asyncio.create_task(produce())
        text_pending = clause
        try:
            done = False
            while not done:
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                codes = [c for c in items if isinstance(c, int)]
                for item in items:
                    if isinstance(item, Exception):
                        raise item
                done = any(item is None for item in items)
                synth.push(codes)
                while done or synth.ready():
                    wav = await self._lane.run(synth.step, done)
                    if wav.numel():
                        yield AudioChunk(self._pcm(wav), self.sample_rate, text_pending)
                        text_pending = ""
                    if done:
                        break
        finally:
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)

    async def synthesize(self, text: AsyncIterator[str]) -> AsyncIterator[AudioChunk]:
        try:
            # aclosing: an abandoned inner generator would otherwise keep the code stream open
            # until garbage collection.
            async with aclosing(clauses(text)) as clause_iter:
                async for clause in clause_iter:
                    async with aclosing(self._speak(clause)) as audio:
                        async for chunk in audio:
                            yield chunk
        finally:
            aclose = getattr(text, "aclose", None)
            if aclose is not None:
                await aclose()

    async def close(self) -> None:
        for obj in (self.source, self.encode):
            closer = getattr(obj, "close", None) or getattr(getattr(obj, "__self__", None), "close", None)
            if closer is not None:
                await closer()
        self._pool.shutdown(wait=False, cancel_futures=True)

