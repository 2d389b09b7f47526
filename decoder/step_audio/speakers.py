"""Speaker prompts for voice cloning: prompt text, prompt codes, prompt mel and CAM++ embedding.

A speaker directory holds, per speaker NAME:
  NAME.json         {"prompt_text": "...", "prompt_codes": [65536 + n, ...]}   (codes from the
                    Step-Audio speech tokenizer; raw codes n < 65536 are accepted too)
  NAME_prompt.wav   the prompt audio (16-bit PCM WAV, any rate, mono or stereo)
Speakers named NAMERAP / NAME哼唱 are used for RAP / humming replies when present, like the reference.
"""
from __future__ import annotations

import json
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr
import torch

from decoder.step_audio.frontend import CampPlus, prompt_mel
from decoder.step_audio.streaming import Prompt
from decoder.step_audio.tts_prompt import AUDIO_BASE


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
