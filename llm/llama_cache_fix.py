"""Keep llama-cpp-python's prompt-state cache (`--cache`) within its configured size.

LlamaRAMCache counts only the llama.cpp state bytes of each cached LlamaState, but each state also
carries a copy of the logits of every prompt token (n_tokens × n_vocab float32: 196 KB per token
with SmolLM2's 49,152-token vocabulary, ~8× the KV state itself). So a "256 MB" cache grew the
server process by 0.7 GB in 20 turns, and would grow without bound as conversations get longer.

Only the last token's logits could matter after a restore, and not even those: generate() always
re-evaluates at least the last prompt token. So a saved state keeps the last row only (load_state
broadcasts it), and the cache counts every array it holds. Applied by llm/llama_child.py before the
server starts; tested in tests/test_llama_server.py.
"""
from __future__ import annotations


def apply() -> None:
    from llama_cpp import llama, llama_cache

    original = llama.Llama.save_state
    if getattr(original, "_keeps_last_logits", False):
        return

    def save_state(self):
        state = original(self)
        state.scores = state.scores[-1:].copy()
        return state

    save_state._keeps_last_logits = True
    llama.Llama.save_state = save_state
    llama_cache.LlamaRAMCache.cache_size = property(
        lambda self: sum(s.llama_state_size + s.scores.nbytes + s.input_ids.nbytes
                         for s in self.cache_state.values()))
