"""The LLM client: every model is reached over the OpenAI-compatible HTTP API."""
from llm.base import LLMClient, Message

__all__ = ["LLMClient", "Message"]
