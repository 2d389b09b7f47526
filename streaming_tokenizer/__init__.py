"""Streaming tokenizer: turns the user's speech into text and/or Step-Audio audio tokens while they talk."""
from streaming_tokenizer.base import StreamingTokenizer, TokenizerFactory, UserInput

__all__ = ["StreamingTokenizer", "TokenizerFactory", "UserInput"]
