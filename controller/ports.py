"""What the controller needs from a transport: somewhere to play audio.

realtime/ implements it per transport (WebRTC track, Realtime WebSocket deltas, a test sink).
"""
from __future__ import annotations

from typing import Protocol

from decoder.base import AudioChunk


class AudioOutput(Protocol):
    def begin_reply(self, response_id: str, item_id: str) -> None:
        """A new reply starts; played_seconds() counts from here."""
        ...

    def write(self, chunk: AudioChunk) -> None:
        """Queue audio for playback; never blocks."""
        ...

    def clear(self) -> None:
        """Drop everything queued and not yet played (barge-in: do not drain)."""
        ...

    def played_seconds(self) -> float:
        """Seconds of the current reply the caller has been sent in real time so far."""
        ...

    async def drain(self) -> None:
        """Return once everything queued has been played."""
        ...


class ToolRunner(Protocol):
    """Server-side tools (tools/ implements it from the config's `tools:` section)."""

    def specs(self) -> list[dict]:
        """Realtime function tools: {type: "function", name, description, parameters}."""
        ...

    def has(self, name: str) -> bool: ...

    def timeout_s(self, name: str) -> float: ...

    async def run(self, name: str, arguments: dict) -> str:
        """The tool's result as text (JSON for structured results). Raises on failure."""
        ...
