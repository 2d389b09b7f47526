"""The real embedded stack end to end (configs/default.yaml; `make models` assembles it):

- an aiortc caller speaks a sentence synthesized by the embedded TTS at test time and hears a
  spoken answer on its media track;
- the official openai SDK does the same over the Realtime WebSocket;
- the controller alone, on real VAD/ASR/LLM/TTS, discards a speculation when the caller resumes
  and commits the one made at the final pause.
"""
from __future__ import annotations

import asyncio
import base64

import aiohttp
import numpy as np
import pytest
import soxr
from openai import AsyncOpenAI

from controller import events as ev
from realtime.config import load_config
from tests.realtime_util import REPO, running_server, wait_until
from tests.speech_util import piper, wer

pytestmark = pytest.mark.integration

SENTENCE = "What is the capital of France?"
REPLY_S = 1.0  # the WebRTC reply must carry at least this much audible audio
AUDIBLE_S_PER_WORD = 0.15  # Piper speaks ~3 words/s; half of that is audible at the least


def default_config():
    # Greedy decoding: at the default temperature SmolLM2 sometimes answers with one word
    # ("Paris."), under a second of audio; the tests are about the pipeline, not the wording.
    return load_config(REPO / "configs" / "default.yaml",
                       {"server.port": 0, "server.auth.enabled": False, "llm.temperature": 0.0})


def trim(pcm: np.ndarray, floor: int = 200) -> np.ndarray:
    """Cut the synthesizer's leading and trailing near-silence, so pauses are what the test says."""
    loud = np.flatnonzero(np.abs(pcm) > floor)
    return pcm[loud[0]:loud[-1] + 1]


def spoken(text: str, rate: int) -> np.ndarray:
    pcm16k = piper(text)
    return soxr.resample(pcm16k, 16_000, rate) if rate != 16_000 else pcm16k


async def test_webrtc_caller_hears_a_spoken_answer():
    from tests.webrtc_util import RATE, Caller, SyntheticMic

    speech = spoken(SENTENCE, RATE)
    mic = SyntheticMic(np.concatenate([np.zeros(int(0.5 * RATE), np.int16), speech]))
    async with running_server(default_config()) as server, aiohttp.ClientSession() as http:
        caller = Caller(mic)
        try:
            await caller.connect(http, str(server.make_url("/v1/realtime/calls")))
            heard = await caller.next("conversation.item.input_audio_transcription.completed", timeout=120)
            assert wer(SENTENCE, heard["transcript"]) <= 0.2, heard["transcript"]
            done = await caller.next("response.done", timeout=120)
            assert done["response"]["status"] == "completed"
            await wait_until(lambda: caller.loud_frames * 0.02 >= REPLY_S, timeout=60, what="1 s of reply audio")
        finally:
            await caller.close()


async def test_openai_sdk_conversation_with_the_embedded_models():
    speech = spoken(SENTENCE, 24_000).astype("<i2")
    pcm = np.concatenate([np.zeros(4800, "<i2"), speech, np.zeros(36_000, "<i2")])
    async with running_server(default_config()) as server:
        async with AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk-test") as client:
            async with client.realtime.connect(model="step-realtime") as conn:
                seen = []
                for i in range(0, len(pcm), 2400):
                    await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i:i + 2400].tobytes()).decode())

                async def until_done():
                    async for event in conn:
                        seen.append(event)
                        if event.type == "response.done":
                            return event

                done = await asyncio.wait_for(until_done(), 120)
    transcript = next(e.transcript for e in seen if e.type == "conversation.item.input_audio_transcription.completed")
    assert wer(SENTENCE, transcript) <= 0.2, transcript
    assert done.response.status == "completed"
    audio = np.concatenate([np.frombuffer(base64.b64decode(e.delta), "<i2") for e in seen
                            if e.type == "response.output_audio.delta"]).astype(np.float64)
    frames = audio[: len(audio) // 480 * 480].reshape(-1, 480)
    audible_s = np.sum(np.sqrt(np.mean(frames ** 2, axis=1)) > 300) * 0.02
    said = next(e.transcript for e in seen if e.type == "response.output_audio_transcript.done")
    words = len(said.split())
    assert words >= 1, "the reply has no text"
    assert audible_s >= AUDIBLE_S_PER_WORD * words, (audible_s, said)  # the whole reply was spoken


async def test_controller_discards_then_commits_with_the_real_stack():
    """Speak, pause long enough to speculate, resume, then stop: the first speculation is
    discarded (its LLM stream closed), the second is committed and played."""
    from context.history import Context
    from controller.controller import Controller, Stages
    from core.stages import BuildEnv, build_all, close_all, start_all
    from tests.fakes import FakeOutput

    cfg = default_config()
    stages = build_all(cfg, BuildEnv(cache_dir=cfg.cache_path))
    await start_all(stages)
    events: list = []
    try:
        out = FakeOutput()
        ctrl = Controller(Stages(stages["vad"].create(), stages["tokenizer"].create(), stages["llm"],
                                 stages["decoder"]), Context(cfg.context.system_prompt), out, events.append,
                          cfg.controller)
        part1, part2 = trim(piper("I would like to visit Paris.")), trim(piper("What should I see there?"))
        pause = np.zeros(int(0.4 * 16_000), np.int16)  # > pause_ms (200), < end_of_turn_ms (650)
        audio = [part1, pause, part2, np.zeros(32_000, np.int16)]
        samples = np.concatenate(audio)
        for i in range(len(samples) // 320):
            ctrl.push_audio(samples[i * 320:(i + 1) * 320])
            await asyncio.sleep(0.02 if i % 5 == 0 else 0)  # roughly real time, in bursts
        await wait_until(lambda: ctrl.state.value == "silence" and out.chunks, timeout=120, what="the reply")
        actions = [e.action for e in events if isinstance(e, ev.Speculation)]
        assert "discarded" in actions and actions[-1] == "committed", actions
        done = [e for e in events if isinstance(e, ev.ResponseDone)]
        assert done[-1].status == "completed" and done[-1].text
        user = next(e.text for e in events if isinstance(e, ev.InputTranscript))
        assert wer("I would like to visit Paris. What should I see there?", user) <= 0.25, user
        await ctrl.close()
    finally:
        await close_all(stages)
