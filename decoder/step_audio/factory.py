"""Wire the Step-Audio decoder from validated options (imports torch)."""
from __future__ import annotations

from pathlib import Path

import torch

from decoder.step_audio import Options
from decoder.step_audio.frontend import CampPlus
from decoder.step_audio.loader import load_models
from decoder.step_audio.speakers import WavToCodes, load_speakers
from decoder.step_audio.streaming import StreamConfig
from decoder.step_audio.tts_decoder import StepAudioDecoder, Voice
from decoder.step_audio.vllm_source import VLLMAudioSource, VLLMTokenizer

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _voice(model_dir: str, opts: Options, wav_to_codes: WavToCodes | None) -> Voice:
    models = load_models(model_dir, device=opts.device, flow_dtype=_DTYPES[opts.flow_dtype])
    speakers = {}
    if opts.speaker_dir:
        campplus_path = Path(model_dir) / "campplus.onnx"
        campplus = CampPlus(campplus_path) if campplus_path.exists() else None
        directory = Path(opts.speaker_dir)
        speakers = load_speakers(directory, campplus, models.hp.mel, wav_to_codes)
        if opts.speaker and opts.speaker not in speakers:
            raise FileNotFoundError(f"decoder.options.speaker: {opts.speaker!r} not in {directory}")
    return Voice(models, speakers)


class _CodesOnce:
    """The speech tokenizer, loaded on first use only (a directory of NAME.json needs none) and
    shared by the common and music voices; dropped after start-up."""

    def __init__(self, model_dir: str | None, device: str) -> None:
        self.model_dir, self.device, self._codes = model_dir, device, None
        self._done: dict[tuple, list[int]] = {}  # both voices read the same prompt wavs

    def get(self) -> WavToCodes | None:
        if self.model_dir is None:
            return None

        def wav_to_codes(audio, rate):
            key = (rate, audio.shape, hash(audio.tobytes()))
            if key not in self._done:
                if self._codes is None:
                    from decoder.step_audio.prompt_codes import SpeechTokenizerCodes

                    self._codes = SpeechTokenizerCodes(self.model_dir, self.device)
                self._done[key] = self._codes(audio, rate)
            return self._done[key]
        return wav_to_codes


def _source(opts: Options):
    """(code source, async text encoder) for the configured token_source."""
    if opts.token_source == "transformers":
        from decoder.step_audio.hf_source import HFAudioSource

        source = HFAudioSource(opts.llm_model_dir, temperature=opts.temperature, max_new_tokens=opts.max_tokens,
                               ras=opts.ras, device=opts.device, dtype=_DTYPES[opts.llm_dtype], seed=opts.seed)
        return source, source.encode
    source = VLLMAudioSource(opts.llm_base_url, opts.llm_model, opts.api_key, opts.temperature, opts.max_tokens,
                             ras=opts.ras)
    return source, VLLMTokenizer(opts.llm_base_url, opts.llm_model).encode


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


def build_decoder(opts: Options, scheduler=None) -> StepAudioDecoder:
    common_dir, music_dir = resolve_model_dirs(opts)
    codes = _CodesOnce(opts.tokenizer_model_dir, opts.device)
    common = _voice(common_dir, opts, codes.get())
    music = _voice(music_dir, opts, codes.get()) if music_dir else None
    source, encode = _source(opts)
    cfg = StreamConfig(first_chunk_tokens=opts.first_chunk_tokens, chunk_tokens=opts.chunk_tokens,
                       max_chunk_tokens=opts.max_chunk_tokens, lookahead_tokens=opts.lookahead_tokens,
                       max_context_tokens=opts.max_context_tokens, fade_frames=opts.fade_frames,
                       steps=opts.steps, speed=opts.speed)
    decoder = StepAudioDecoder(common, source, encode, music=music, speaker=opts.speaker, stream=cfg,
                               volume=opts.volume, seed=opts.seed, workers=opts.workers, scheduler=scheduler)
    # A second, lazy loader for clone_voice(): the start-up one above is dropped once the speakers
    # are loaded, and a server that never clones never loads the tokenizer for this.
    decoder.prompt_codes = _CodesOnce(opts.tokenizer_model_dir, opts.device).get()
    return decoder
