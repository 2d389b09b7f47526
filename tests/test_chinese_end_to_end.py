"""A Mandarin turn end to end on the real stack with Qwen (configs/qwen.yaml): a question spoken by
espeak-ng's Mandarin voice → a transcript in simplified Chinese characters → a reply in Chinese →
audio that Whisper, told it is Mandarin, transcribes back to Chinese characters."""
from __future__ import annotations

import base64
import re

import numpy as np
import pytest
import soxr

from realtime.config import load_config
from tests.realtime_util import REPO, running_server, silence, ws_client
from tests.speech_util import espeak, transcribe

pytestmark = pytest.mark.integration

QUESTION = "你好，我想问一个问题。"  # "Hello, I would like to ask a question." (Whisper base hears it right at 120 wpm)
HAN = re.compile(r"[\u4e00-\u9fff]")


def qwen_config():
    # tokenizer.language zh: Whisper base's language detection takes espeak-ng's robotic Mandarin
    # for Thai more often than not (a Mandarin line would be configured so too).
    return load_config(REPO / "configs" / "qwen.yaml", {
        "server.port": 0, "server.auth.enabled": False, "tools": [], "llm.temperature": 0, "llm.max_tokens": 40,
        "controller.speculation": False, "tokenizer.language": "zh"})


async def test_a_mandarin_question_gets_a_mandarin_answer() -> None:
    import opencc

    question = soxr.resample(espeak(QUESTION, "cmn-latn-pinyin", 120), 16_000, 24_000).astype(np.int16)
    async with running_server(qwen_config()) as server:
        async with ws_client(server) as c:
            await c.send_audio(np.concatenate([silence(0.5), question, silence(1.5)]))
            heard = (await c.next("conversation.item.input_audio_transcription.completed", timeout=180))["transcript"]
            done = await c.next("response.done", timeout=300)
            audio = np.concatenate([np.frombuffer(base64.b64decode(e["delta"]), np.int16)
                                    for e in c.of_type("response.output_audio.delta")])
    assert len(HAN.findall(heard)) >= 4, heard
    assert opencc.OpenCC("t2s").convert(heard) == heard, f"not in simplified characters: {heard}"
    said = done["response"]["output"][0]["content"][0]["transcript"]
    assert len(HAN.findall(said)) >= 4 and len(HAN.findall(said)) > len(re.findall(r"[A-Za-z]{2,}", said)), said
    assert len(audio) > 24_000 * 0.5, "less than half a second of reply audio"
    back = await transcribe(audio, 24_000, "zh", qwen_config().cache_path)  # Whisper base
    assert len(HAN.findall(back)) >= 3, f"the reply audio is not heard as Mandarin: {back!r} (said: {said})"
