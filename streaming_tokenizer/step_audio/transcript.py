"""Transcript text for the history (Step-Audio keeps past turns as text, not audio tokens).

Either the embedded Whisper tokenizer runs alongside on the same frames (its own streaming,
composed through the TokenizerFactory interface), or Step-Audio-Chat itself transcribes the
turn's audio tokens with the ASR system prompt, or there is no transcript at all.
"""
from __future__ import annotations

ASR_PROMPT = "请记录下你所听到的语音内容。"


class WhisperTranscriber:
    """Wraps the whisper tokenizer's factory: one whisper session beside each step-audio session."""

    def __init__(self, factory) -> None:
        self.factory = factory

    def create_session(self):
        return self.factory.create()

    async def close(self) -> None:
        close = getattr(self.factory, "close", None)
        if close is not None:
            await close()


class ChatTranscriber:
    """Asks Step-Audio-Chat (llm.step_audio client) for the transcript of the audio tokens."""

    def __init__(self, client) -> None:
        self.client = client

    def create_session(self):
        return None

    async def transcribe(self, audio_tokens: tuple[int, ...]) -> str:
        return (await self.client.complete_text(ASR_PROMPT, audio_tokens)).strip()

    async def close(self) -> None:
        await self.client.close()
