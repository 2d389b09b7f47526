"""Step-Audio production decoder: Step-Audio-TTS-3B (via vLLM) -> CosyVoice flow -> HiFT, in torch.

Only `build` lives here; torch is imported when the stage is built, never by the embedded default.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Step-Audio-TTS-3B dir (its CosyVoice-300M-25Hz[-Music] subdirs are used) or a CosyVoice dir
    # itself (cosyvoice.yaml, flow.pt, hift.pt, campplus.onnx).
    model_dir: str
    music_model_dir: str | None = None  # CosyVoice-300M-25Hz-Music, for (RAP) and (哼唱)
    llm_base_url: str = "http://127.0.0.1:8001/v1"  # vLLM serving Step-Audio-TTS-3B (not the chat model's)
    llm_model: str = "Step-Audio-TTS-3B"
    api_key: str = "EMPTY"
    temperature: float = 0.7
    max_tokens: int = 4096
    speaker_dir: str | None = None  # see decoder/step_audio/speakers.py
    speaker: str = ""
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


def build(options: dict, env):
    from realtime.config import validate_options

    opts: Options = validate_options(Options, "decoder.options", options)
    from decoder.step_audio.factory import build_decoder

    return build_decoder(opts)
