"""In-process transformers code source (decoder.step_audio.hf_source) on a tiny random Llama with
Step-Audio's id layout (audio ids 65536 + n), and its wiring as the decoder's code source."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from decoder.step_audio.hf_source import HFAudioSource  # noqa: E402
from decoder.step_audio.ras import RepetitionAwareLogitsProcessor, violations  # noqa: E402
from decoder.step_audio.tts_decoder import StepAudioDecoder, Voice  # noqa: E402
from tests.step_audio_fixtures import FIX, _one_torch_thread, models  # noqa: E402,F401 (fixtures)

A = 65536
VOCAB = 74752
ALLOWED = [A + n for n in range(4)]  # the tiny model only ever samples these four audio ids
WORDS = ["[UNK]", "hello", "world", "human", "assistant", "system"]


def write_tiny_tts_llm(path, seed: int = 0):
    """A 1-layer Llama whose logits put ~all mass on ALLOWED, nearly uniformly: with 4 choices the
    last id comes up again often, so the repetition rule has real work to do."""
    from tokenizers import Tokenizer, models as tok_models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=3, pad_token_id=0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        # Dimension 0 of every embedding is 1 and dominates the (small) residual stream, so after
        # the final RMSNorm hidden[0] ~ 4 whatever the input; lm_head reads it with weight +5 for
        # ALLOWED and -5 for everything else: logits ~ +20 vs -20.
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.lm_head.weight[:, 0] = -5.0
        model.lm_head.weight[ALLOWED, 0] = 5.0
    model.save_pretrained(path)
    tok = Tokenizer(tok_models.WordLevel({w: i + 5 for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return write_tiny_tts_llm(tmp_path_factory.mktemp("tiny_tts_llm"))


PROMPT = [1, 4, 10, 6, 7, 3, 4, 9, 6, 3, 4, 8]




async def test_streamed_ids_are_generate_output_and_obey_the_rule(llm_dir):
    source = HFAudioSource(llm_dir, max_new_tokens=60, seed=5)
    streamed = [t async for t in source.tokens(PROMPT)]
    assert len(streamed) == 60 and set(streamed) <= set(ALLOWED)
    assert violations(PROMPT, streamed) == 0
    assert source.last_streamer.thread_name.startswith("step-audio-tts-llm")  # off the event loop
    # The same call done directly (same seed, same processor) gives the same ids, in order.
    torch.manual_seed(5)
    full = source.model.generate(torch.tensor([PROMPT]), do_sample=True, temperature=0.7, max_new_tokens=60,
                                 logits_processor=transformers.LogitsProcessorList([RepetitionAwareLogitsProcessor()]))
    assert streamed == full[0, len(PROMPT):].tolist()
    assert [c async for c in source.codes(PROMPT)] == [t - A for t in streamed]
    await source.close()


async def test_without_the_rule_the_tiny_model_repeats(llm_dir):
    source = HFAudioSource(llm_dir, max_new_tokens=60, seed=5, ras=False)
    streamed = [t async for t in source.tokens(PROMPT)]
    assert violations(PROMPT, streamed) >= 5  # so the test above can fail
    await source.close()


async def test_closing_the_iterator_stops_generation(llm_dir):
    source = HFAudioSource(llm_dir, max_new_tokens=3000, seed=1)
    gen = source.tokens(PROMPT)
    first = [await gen.__anext__() for _ in range(5)]
    assert len(first) == 5
    await gen.aclose()  # returns once the worker has stopped
    produced = source.last_streamer.produced
    assert 5 <= produced < 3000
    await asyncio.sleep(0.05)
    assert source.last_streamer.produced == produced  # the worker really stopped
    # Nothing runs any more: the pool's only thread is free for the next reply at once.
    again = [t async for t in _take(source.tokens(PROMPT), 3)]
    assert len(again) == 3 and source.last_streamer.produced < 3000
    await source.close()


async def _take(agen, n):
    try:
        for _ in range(n):
            yield await agen.__anext__()
    finally:
        await agen.aclose()


async def test_encode_uses_the_model_dirs_tokenizer(llm_dir):
    source = HFAudioSource(llm_dir, max_new_tokens=1)
    assert await source.encode("hello world") == [6, 7]
    assert await source.encode("hello 你好") == [6, 5]  # unknown -> [UNK]
    await source.close()


def test_missing_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="llm_model_dir"):
        HFAudioSource(tmp_path / "nope")


async def test_decoder_speaks_with_the_in_process_source(models, llm_dir):
    source = HFAudioSource(llm_dir, max_new_tokens=30, seed=2)
    dec = StepAudioDecoder(Voice(models), source, source.encode, seed=1)
    chunks = [c async for c in dec.synthesize(_text("hello world."))]
    assert chunks and chunks[0].text == "hello world." and chunks[0].pcm.dtype == np.int16
    total = sum(len(c.pcm) for c in chunks)
    assert total == models.flow.mel_frames(30) * 256  # every generated code became audio
    assert np.abs(np.concatenate([c.pcm for c in chunks])).max() > 0
    await dec.close()


async def test_barge_in_stops_the_in_process_generation(models, llm_dir):
    source = HFAudioSource(llm_dir, max_new_tokens=3000, seed=2)
    dec = StepAudioDecoder(Voice(models), source, source.encode, seed=1)
    gen = dec.synthesize(_text("hello world."))
    first = await gen.__anext__()
    assert first.text == "hello world."
    await gen.aclose()  # cancels the code producer, which closes the source's iterator
    produced = source.last_streamer.produced
    assert produced < 3000
    await asyncio.sleep(0.05)
    assert source.last_streamer.produced == produced
    await dec.close()


async def _text(*pieces):
    for p in pieces:
        yield p


async def test_build_with_the_transformers_token_source(tmp_path, llm_dir):
    from core.config import ConfigError
    from core.stages import BuildEnv, build_stage

    opts = {"model_dir": str(FIX / "model"), "token_source": "transformers", "llm_model_dir": str(llm_dir),
            "max_tokens": 20, "seed": 3}
    dec = build_stage("decoder", "step-audio", opts, BuildEnv(cache_dir=tmp_path))
    assert isinstance(dec.source, HFAudioSource) and dec.encode == dec.source.encode
    assert dec.source.ras and dec.source.max_new_tokens == 20
    chunks = [c async for c in dec.synthesize(_text("hello."))]
    assert sum(len(c.pcm) for c in chunks) > 0
    await dec.close()
    with pytest.raises(ConfigError, match="needs llm_model_dir"):
        build_stage("decoder", "step-audio", {**opts, "llm_model_dir": None}, BuildEnv(cache_dir=tmp_path))
    with pytest.raises(ConfigError, match="only used with token_source: transformers"):
        build_stage("decoder", "step-audio", {**opts, "token_source": "vllm"}, BuildEnv(cache_dir=tmp_path))
    plain = build_stage("decoder", "step-audio", {"model_dir": str(FIX / "model"), "ras": False},
                        BuildEnv(cache_dir=tmp_path))
    assert plain.source.ras is False and plain.source.restarts == 0
    await plain.close()
