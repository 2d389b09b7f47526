"""Step-Audio production decoder: Step-Audio-TTS-3B (vLLM or in-process) -> CosyVoice flow -> HiFT.

Only `build` lives here; torch is imported when the stage is built, never by the embedded default.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Step-Audio-TTS-3B dir (its CosyVoice-300M-25Hz[-Music] subdirs are used) or a CosyVoice dir
    # itself (cosyvoice.yaml, flow.pt, hift.pt, campplus.onnx).
    model_dir: str
    music_model_dir: str | None = None  # CosyVoice-300M-25Hz-Music, for (RAP) and (哼唱)
    # Where the TTS-3B audio codes come from: an OpenAI-compatible completions server (vllm) or
    # transformers in this process (loads llm_model_dir, the Step-Audio-TTS-3B directory).
    token_source: Literal["vllm", "transformers"] = "vllm"
    llm_base_url: str = "http://127.0.0.1:8001/v1"  # vLLM serving Step-Audio-TTS-3B (not the chat model's)
    llm_model: str = "Step-Audio-TTS-3B"
    api_key: str = "EMPTY"
    llm_model_dir: str | None = None  # token_source: transformers
    llm_dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # transformers; the reference: bfloat16
    temperature: float = 0.7
    max_tokens: int = 4096
    ras: bool = True  # the reference's repetition-aware sampling (ras.py)
    speaker_dir: str | None = None  # see decoder/step_audio/speakers.py
    speaker: str = ""
    # Step-Audio-Tokenizer directory: computes prompt codes of speakers in the reference layout
    # (speakers_info.json + NAME_prompt.wav) at start-up.
    tokenizer_model_dir: str | None = None
    device: str = "cpu"
    flow_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    workers: int = 2
    first_chunk_tokens: int = 10
    chunk_tokens: int = 25
    max_chunk_tokens: int = 100
    lookahead_tokens: int = 3
    max_context_tokens: int | None = 300
    fade_frames: int = 8
    steps: int = 10
    speed: float = 1.0
    volume: float = 1.0
    seed: int | None = None

    @model_validator(mode="after")
    def _source_options(self) -> "Options":
        if self.token_source == "transformers" and not self.llm_model_dir:
            raise ValueError("token_source: transformers needs llm_model_dir (the Step-Audio-TTS-3B directory)")
        if self.token_source == "vllm" and self.llm_model_dir:
            raise ValueError("llm_model_dir is only used with token_source: transformers "
                             "(with vllm the server loads the model; set llm_base_url)")
        return self


def build(options: dict, env):
    from core.config import validate_options

    opts: Options = validate_options(Options, "decoder.options", options)
    from decoder.step_audio.factory import build_decoder

    return build_decoder(opts, env.scheduler)
