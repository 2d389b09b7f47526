"""The Realtime output_audio_buffer.* events for transports that play audio on the server (WebRTC).

OpenAI sends, on WebRTC/SIP only: `output_audio_buffer.started` when a response's audio starts
going out, `.stopped` once all of it has been sent (after `response.done`), `.cleared` when it was
cut (barge-in, response.cancel, or the client's `output_audio_buffer.clear`). The session wraps its
AudioOutput in OutputBufferEvents; the controller sees an ordinary AudioOutput and the transport's
own output (realtime/outputs.py) stays unaware of the protocol.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from controller.ports import AudioOutput
from decoder.base import AudioChunk


class OutputBufferEvents:
    """An AudioOutput that forwards everything to `inner` and reports the buffer's life."""

    def __init__(self, inner: AudioOutput, send: Callable[[dict[str, Any]], None]) -> None:
        self.inner = inner
        self._send = send
        self.response_id: str | None = None  # the reply whose audio is (or was last) in the buffer
        self._accepting = False  # between begin_reply and clear: the inner output takes writes
        self._audio_out = False  # started was sent and neither stopped nor cleared since
        self._drained: str | None = None  # response whose audio all went out; stopped follows its done

    @property
    def active(self) -> bool:
        """Audio of a reply is queued or playing."""
        return self._audio_out

    def begin_reply(self, response_id: str, item_id: str) -> None:
        self.response_id, self._audio_out, self._drained = response_id, False, None
        self._accepting = True
        self.inner.begin_reply(response_id, item_id)

    def write(self, chunk: AudioChunk) -> None:
        self.inner.write(chunk)
        # After clear() the inner output drops a cancelled reply's late chunks: no `started` for them.
        if self._accepting and not self._audio_out and len(chunk.pcm):
            self._audio_out = True
            self._send({"type": "output_audio_buffer.started", "response_id": self.response_id})

    def clear(self) -> None:
        self.inner.clear()
        self._accepting = False
        if self._audio_out:
            self._audio_out = False
            self._send({"type": "output_audio_buffer.cleared", "response_id": self.response_id})

    def played_seconds(self) -> float:
        return self.inner.played_seconds()

    async def drain(self) -> None:
        rid = self.response_id
        await self.inner.drain()
        if self._audio_out and rid == self.response_id:  # played to the end, not cleared meanwhile
            self._drained = rid

    def response_done(self, response_id: str) -> None:
        """After response.done went out: `stopped`, if that response's audio has all been sent."""
        if self._drained == response_id and self._audio_out:
            self._audio_out, self._drained = False, None
            self._send({"type": "output_audio_buffer.stopped", "response_id": response_id})
