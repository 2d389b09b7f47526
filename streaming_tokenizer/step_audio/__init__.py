"""Step-Audio's streaming dual-codebook tokenizer (the production, GPU path).

build() loads the published Step-Audio-Tokenizer directory (see loader.py) once per server and
returns a factory of per-session tokenizers. Importing this package costs nothing; torch,
onnxruntime and kaldi-native-fbank are imported by build() only (the `step-audio` extra).
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_dir: str = Field(..., description="the Step-Audio-Tokenizer download")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda if torch sees a GPU")
    semantic_segment_s: float = Field(4.0, ge=0.2, le=30.0,
                                      description="the semantic tokenizer runs over segments this long")
    chunk_size: tuple[int, int, int] = Field((0, 4, 5), description="Paraformer-online chunk (LFR frames)")
    encoder_look_back: int = Field(4, ge=-1, description="chunks of encoder self-attention look-back")
    onnx_threads: int = Field(1, ge=1)
    transcript: Literal["whisper", "chat", "none"] = Field(
        "whisper", description="history text: embedded whisper, Step-Audio-Chat ASR, or none")
    whisper: dict[str, Any] = Field(default_factory=dict, description="options of tokenizer impl whisper")
    chat: dict[str, Any] = Field(default_factory=dict, description="options of llm impl step-audio (for ASR)")


class StepAudioTokenizerFactory:
    """Shared per server: the models and the one thread that runs them."""

    def __init__(self, models, transcriber=None, scheduler=None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from core.scheduler import Scheduler

        self.models = models
        self.transcriber = transcriber
        # One model thread: sessions' jobs queue instead of fighting over the GPU/CPU, most
        # urgent first (the scheduler's "tokenizer" lane).
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="step-audio-tokenizer")
        self.lane = (scheduler or Scheduler()).lane("tokenizer", 1, executor=self.executor)

    def create(self):
        from streaming_tokenizer.step_audio.session import StepAudioTokenizer

        return StepAudioTokenizer(self.models, self.lane, self.transcriber)

    async def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.transcriber is not None:
            await self.transcriber.close()


def load_models(opts: Options):
    import torch

    from streaming_tokenizer.step_audio.linguistic import LinguisticModel
    from streaming_tokenizer.step_audio.loader import locate
    from streaming_tokenizer.step_audio.semantic import SemanticModel
    from streaming_tokenizer.step_audio.session import StepAudioModels

    files = locate(opts.model_dir)
    device = opts.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    linguistic = LinguisticModel.load(files, device, opts.chunk_size, opts.encoder_look_back)
    semantic = SemanticModel(files.semantic_onnx, opts.semantic_segment_s, device, opts.onnx_threads)
    return StepAudioModels(linguistic, semantic)


def build(options: dict, env) -> StepAudioTokenizerFactory:
    from core.config import validate_options
    from streaming_tokenizer.step_audio.transcript import ChatTranscriber, WhisperTranscriber

    opts = validate_options(Options, "tokenizer", options)
    models = load_models(opts)
    transcriber = None
    if opts.transcript == "whisper":
        from core.stages import build_stage

        transcriber = WhisperTranscriber(build_stage("tokenizer", "whisper", opts.whisper, env))
    elif opts.transcript == "chat":
        from llm.step_audio import build as build_chat

        transcriber = ChatTranscriber(build_chat(opts.chat, env))
    return StepAudioTokenizerFactory(models, transcriber, env.scheduler)
