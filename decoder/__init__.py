"""Decoder (speech synthesis): text pieces in, audio chunks out, clause by clause."""
from decoder.base import AudioChunk, Decoder

__all__ = ["AudioChunk", "Decoder"]
