"""Speaker prompts for voice cloning: prompt text, prompt codes, prompt mel and CAM++ embedding.

A speaker directory holds, per speaker NAME, the prompt audio NAME_prompt.wav (16-bit PCM WAV, any
rate, mono or stereo) and, in either layout (both may be mixed; NAME.json wins for a name in both):
  NAME.json           {"prompt_text": "...", "prompt_codes": [65536 + n, ...]}  (ours: codes computed
                      beforehand by the Step-Audio speech tokenizer; raw codes n < 65536 accepted)
  speakers_info.json  {"NAME": "prompt text", ...}  (the reference's layout: prompt codes are computed
                      at start-up from NAME_prompt.wav by the speech tokenizer, prompt_codes.py)
Speakers named NAMERAP / NAME哼唱 are used for RAP / humming replies when present, like the reference.
"""
from __future__ import annotations

import json
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr
import torch

from decoder.step_audio.frontend import CampPlus, prompt_mel
from decoder.step_audio.streaming import Prompt
from decoder.step_audio.tts_prompt import AUDIO_BASE

REFERENCE_INDEX = "speakers_info.json"
WavToCodes = Callable[[np.ndarray, int], list[int]]  # (audio, rate) -> LLM ids 65536 + n


@dataclass
class Speaker:
    name: str
    prompt_text: str
    prompt_codes: list[int]  # LLM ids (65536 + n)
    flow_prompt: Prompt


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono float32 in [-1, 1] and its rate."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        rate, channels = w.getframerate(), w.getnchannels()
    audio = pcm.reshape(-1, channels).astype(np.float32).mean(axis=1) / 32768.0
    return audio, rate


def make_prompt(audio: np.ndarray, rate: int, codes: list[int], campplus: CampPlus | None,
                mel_conf: dict) -> Prompt:
    wav22 = soxr.resample(audio, rate, mel_conf["sampling_rate"]) if rate != mel_conf["sampling_rate"] else audio
    mel = prompt_mel(torch.from_numpy(np.ascontiguousarray(wav22)), **mel_conf)
    if campplus is not None:
        emb = campplus.embed(torch.from_numpy(soxr.resample(audio, rate, 16000) if rate != 16000 else audio))
    else:
        emb = torch.zeros(1, 192)
    token = torch.tensor([[c - AUDIO_BASE for c in codes]], dtype=torch.long)
    return Prompt(token=token, mel=mel, embedding=emb)


def load_speaker(directory: Path, name: str, campplus: CampPlus | None, mel_conf: dict) -> Speaker:
    meta_path = directory / f"{name}.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"speaker {name!r}: {meta_path} not found")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    codes = [int(c) if int(c) >= AUDIO_BASE else int(c) + AUDIO_BASE for c in meta.get("prompt_codes", [])]
    audio, rate = read_wav(directory / f"{name}_prompt.wav")
    return Speaker(name, str(meta.get("prompt_text", "")), codes, make_prompt(audio, rate, codes, campplus, mel_conf))


def _reference_index(directory: Path) -> dict[str, str]:
    path = directory / REFERENCE_INDEX
    if not path.exists():
        return {}
    index = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(index, dict) or not all(isinstance(v, str) for v in index.values()):
        raise ValueError(f"{path}: expected {{\"NAME\": \"prompt text\", ...}}")
    return index


def load_speakers(directory: Path, campplus: CampPlus | None, mel_conf: dict,
                  wav_to_codes: WavToCodes | None = None) -> dict[str, Speaker]:
    """Every speaker of a directory. wav_to_codes is needed only for reference-layout speakers
    without a NAME.json; without it they are an error that says which option to set."""
    directory = Path(directory)
    speakers = {p.stem: load_speaker(directory, p.stem, campplus, mel_conf)
                for p in sorted(directory.glob("*.json")) if p.name != REFERENCE_INDEX}
    pending = {name: text for name, text in _reference_index(directory).items() if name not in speakers}
    if pending and wav_to_codes is None:
        raise ValueError(f"speaker_dir {directory}: {REFERENCE_INDEX} lists {sorted(pending)}, whose prompt codes "
                         "are computed at start-up by the Step-Audio speech tokenizer: set "
                         "decoder.options.tokenizer_model_dir (the Step-Audio-Tokenizer directory)")
    for name, text in pending.items():
        wav = directory / f"{name}_prompt.wav"
        if not wav.exists():
            raise FileNotFoundError(f"speaker {name!r} ({REFERENCE_INDEX}): {wav} not found")
        audio, rate = read_wav(wav)
        codes = list(wav_to_codes(audio, rate))
        if not codes:
            raise ValueError(f"speaker {name!r}: the speech tokenizer gave no codes for {wav} (silent or too short)")
        speakers[name] = Speaker(name, text, codes, make_prompt(audio, rate, codes, campplus, mel_conf))
    return speakers


def clone_speaker(models, audio: np.ndarray, rate: int, prompt_text: str, wav_to_codes: WavToCodes) -> Speaker:
    """A voice cloned from a prompt recording, as the reference's tts.py does with its clone_dict:
    prompt codes from the speech tokenizer, the flow prompt from the recording's mel and CAM++
    embedding (`models`: the CosyVoiceModels whose campplus.onnx is used). Its name is "": the
    reference blanks the speaker for a clone, so the system prompt names no speaker."""
    campplus_path = Path(models.model_dir) / "campplus.onnx"
    campplus = CampPlus(campplus_path) if campplus_path.exists() else None
    codes = list(wav_to_codes(audio, rate))
    if not codes:
        raise ValueError("the speech tokenizer gave no codes for the prompt recording (silent or too short)")
    return Speaker("", prompt_text, codes, make_prompt(audio, rate, codes, campplus, models.hp.mel))
