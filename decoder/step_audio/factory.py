"""Wire the Step-Audio decoder from validated options (imports torch)."""
from __future__ import annotations

from pathlib import Path

import torch

from decoder.step_audio import Options
from decoder.step_audio.frontend import CampPlus
from decoder.step_audio.loader import load_models
from decoder.step_audio.speakers import load_speaker
from decoder.step_audio.streaming import StreamConfig
from decoder.step_audio.tts_decoder import StepAudioDecoder, Voice
from decoder.step_audio.vllm_source import VLLMAudioSource, VLLMTokenizer

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _voice(model_dir: str, opts: Options) -> Voice:
    models = load_models(model_dir, device=opts.device, flow_dtype=_DTYPES[opts.flow_dtype])
    speakers = {}
    if opts.speaker_dir:
        campplus_path = Path(model_dir) / "campplus.onnx"
        campplus = CampPlus(campplus_path) if campplus_path.exists() else None
        directory = Path(opts.speaker_dir)
        for name in sorted({p.stem for p in directory.glob("*.json")}):
            speakers[name] = load_speaker(directory, name, campplus, models.hp.mel)
        if opts.speaker and opts.speaker not in speakers:
            raise FileNotFoundError(f"decoder.options.speaker: {opts.speaker!r} not in {directory}")
    return Voice(models, speakers)


def resolve_model_dirs(opts: Options) -> tuple[str, str | None]:
    """model_dir may be CosyVoice-300M-25Hz itself or the Step-Audio-TTS-3B directory holding it
    (then the -Music sibling is picked up too, unless music_model_dir says otherwise)."""
    root = Path(opts.model_dir)
    if (root / "cosyvoice.yaml").exists():
        return str(root), opts.music_model_dir
    common = root / "CosyVoice-300M-25Hz"
    if not (common / "cosyvoice.yaml").exists():
        raise FileNotFoundError(f"decoder.options.model_dir: no cosyvoice.yaml in {root} or {common}")
    music = root / "CosyVoice-300M-25Hz-Music"
    return str(common), opts.music_model_dir or (str(music) if (music / "cosyvoice.yaml").exists() else None)


def build_decoder(opts: Options) -> StepAudioDecoder:
    common_dir, music_dir = resolve_model_dirs(opts)
    common = _voice(common_dir, opts)
    music = _voice(music_dir, opts) if music_dir else None
    source = VLLMAudioSource(opts.llm_base_url, opts.llm_model, opts.api_key, opts.temperature, opts.max_tokens)
    tokenizer = VLLMTokenizer(opts.llm_base_url, opts.llm_model)
    cfg = StreamConfig(first_chunk_tokens=opts.first_chunk_tokens, chunk_tokens=opts.chunk_tokens,
                       max_chunk_tokens=opts.max_chunk_tokens, lookahead_tokens=opts.lookahead_tokens,
                       max_context_tokens=opts.max_context_tokens, fade_frames=opts.fade_frames,
                       steps=opts.steps, speed=opts.speed)
    return StepAudioDecoder(common, source, tokenizer.encode, music=music, speaker=opts.speaker, stream=cfg,
                            volume=opts.volume, seed=opts.seed, workers=opts.workers)
