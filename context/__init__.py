"""Conversation history, kept as text (Step-Audio's 14:1 context compression)."""
from context.history import AUDIO_TOKENS_PER_SECOND, Context, Turn

__all__ = ["AUDIO_TOKENS_PER_SECOND", "Context", "Turn"]
