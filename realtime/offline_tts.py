"""`step-realtime tts`: speak a text with the configured decoder, as Step-Audio's tts_inference.py.

On the Step-Audio decoder the text goes to TTS-3B as written and in one generation, so its leading
instruction tags — emotion (高兴1…), language or dialect (粤语, 四川话…), speed (慢速1…), RAP and
哼唱 (humming, on the music flow model) — apply to all of it (decoder/step_audio/tags.py); `--voice`
picks a speaker of decoder.speaker_dir and `--prompt-wav/--prompt-text` clone a voice from a
recording, as the reference's clone_dict does. The embedded decoders cannot follow the tags: the
speed tags are honoured by their speed option, every other tag is reported (stderr and the JSON
line) and left out of the spoken text rather than read aloud or silently dropped.
"""
from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from core.stages import BuildEnv
from decoder.step_audio import tags as tagmod  # the tag grammar only: no torch
from realtime.audio_files import AudioFileError, read_audio, write_wav
from realtime.config import Config
from realtime.offline import OfflineError, Progress, build_stages, close_stages, join_chunks, to_stderr

# How much faster the embedded voices speak for a speed tag. TTS-3B learned what the tags mean;
# these factors are our choice, not the reference's.
SPEED_FACTORS = {"慢速1": 0.8, "慢速2": 0.65, "快速1": 1.25, "快速2": 1.5}


def _shown(tags: list[str]) -> str:
    return " ".join(f"({t})" for t in tags)


async def run_tts(cfg: Config, text: str, out_path: str, voice: str | None = None, prompt_wav: str | None = None,
                  prompt_text: str | None = None, progress: Progress = to_stderr) -> dict[str, Any]:
    if not text.strip():
        raise OfflineError("--text is empty", 2)
    if (prompt_wav is None) != (prompt_text is None):
        raise OfflineError("--prompt-wav and --prompt-text go together (the recording and what it says)", 2)
    impl = cfg.decoder.impl
    options = cfg.decoder.options()
    tagged = tagmod.parse(text)
    record: dict[str, Any] = {"out": out_path, "text": text, "tags": list(tagged.tags)}
    prompt = None
    if impl == "step-audio":
        spoken = text  # TTS-3B reads the tags itself
        record["unknown_tags"] = list(tagged.unknown)
        if tagged.unknown:
            progress(f"step-realtime: tts: tags TTS-3B was not trained with, passed to it as written: "
                     f"{_shown(list(tagged.unknown))}")
        if prompt_wav is not None:
            prompt = _read_prompt(prompt_wav, progress)
            if not options.get("tokenizer_model_dir") and cfg.tokenizer.impl == "step-audio":
                # The speech tokenizer of the tokenizer stage computes the prompt's codes.
                options["tokenizer_model_dir"] = cfg.tokenizer.options().get("model_dir")
    else:
        if prompt_wav is not None:
            raise OfflineError(f"decoder {impl} cannot clone a voice from a prompt recording; the Step-Audio "
                               "decoder can (--config configs/step-audio.yaml)", 2)
        spoken = tagged.body
        if not spoken.strip():
            raise OfflineError("--text has tags but nothing to say", 2)
        if voice is not None:
            options["voice"] = _embedded_voice(impl, voice)
        honoured = _honour_speed(impl, tagged, options)
        ignored = [t for t in tagged.tags if t not in honoured]
        record.update(honoured_tags=honoured, ignored_tags=ignored)
        if ignored:
            progress(f"step-realtime: tts: ignored tags the embedded voice cannot honour: {_shown(ignored)}")
    out = Path(out_path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OfflineError(f"--out {out}: {exc.strerror or exc}", 2) from None

    progress(f"step-realtime: tts: starting decoder {impl}")
    env = BuildEnv(cache_dir=cfg.cache_path)
    stages = await build_stages(cfg, ("decoder",), env, {"decoder": options})
    decoder = stages["decoder"]
    try:
        audio = _audio_of(decoder, impl, spoken, voice, prompt, prompt_text)
        t0 = time.monotonic()
        first = None
        chunks = []
        try:
            async for chunk in audio:
                first = first or time.monotonic()
                chunks.append(chunk)
        except Exception as exc:
            raise OfflineError(f"synthesis failed: {type(exc).__name__}: {exc}") from None
        t_end = time.monotonic()
    finally:
        await close_stages(stages, env)
    pcm, rate = join_chunks(chunks, decoder.sample_rate)
    if not len(pcm):
        raise OfflineError("the decoder produced no audio")
    write_wav(out, pcm, rate)
    record.update(voice=voice, cloned_from=prompt_wav, audio_s=round(len(pcm) / rate, 3), sample_rate=rate,
                  timings={"tts_first_audio_ms": round((first - t0) * 1000, 1), "tts_ms": round((t_end - t0) * 1000, 1)})
    print(json.dumps(record, ensure_ascii=False), flush=True)
    progress(f"step-realtime: tts: {record['audio_s']:.1f} s of speech → {out}")
    return record


def _audio_of(decoder, impl: str, text: str, voice: str | None, prompt, prompt_text: str | None) -> AsyncIterator:
    if impl != "step-audio":
        return decoder.synthesize(_once(text))
    if voice is not None and voice not in decoder.voices:
        known = ", ".join(decoder.voices) or "none: decoder.speaker_dir is not set"
        raise OfflineError(f"unknown voice {voice!r} (voices: {known})", 2)
    clone = None
    if prompt is not None:
        try:
            clone = decoder.clone_voice(prompt.pcm.astype(np.float32) / 32768.0, prompt.rate, prompt_text or "")
        except ValueError as exc:
            raise OfflineError(str(exc), 2) from None
    return decoder.speak(text, voice=voice, clone=clone)


async def _once(text: str) -> AsyncIterator[str]:
    yield text


def _read_prompt(path: str, progress: Progress):
    try:
        prompt = read_audio(path, None)  # its own rate: the cloning front end resamples as it needs
    except AudioFileError as exc:
        raise OfflineError(str(exc), 2) from None
    if prompt.conversion():
        progress(f"step-realtime: tts: {path}: {prompt.conversion()}")
    return prompt


def _honour_speed(impl: str, tagged: tagmod.TaggedText, options: dict[str, Any]) -> list[str]:
    """Apply the first speed tag to the embedded decoder's options; the tags honoured."""
    speed = next((t for t in tagged.tags if t in SPEED_FACTORS), None)
    if speed is None or impl not in ("piper", "espeak"):
        return []
    factor = SPEED_FACTORS[speed]
    if impl == "espeak":
        options["speed_wpm"] = int(min(450, max(80, options.get("speed_wpm", 175) * factor)))
    elif options.get("length_scale") is not None:
        options["length_scale"] = options["length_scale"] / factor
    else:
        options["speed"] = (options.get("speed") or 1.0) * factor
    return [speed]


def _embedded_voice(impl: str, voice: str) -> str:
    if impl != "piper":
        raise OfflineError(f"decoder {impl} has no voices to choose from (piper and step-audio do)", 2)
    from core.assets import ASSETS

    if Path(voice).suffix == ".onnx":
        if not Path(voice).expanduser().is_file():
            raise OfflineError(f"--voice {voice}: no such voice file", 2)
        return voice
    known = sorted(name for name in ASSETS if name.startswith("piper-"))
    if voice not in known:
        raise OfflineError(f"unknown voice {voice!r} (embedded voices: {', '.join(known)}; "
                           "or a path to a piper .onnx voice)", 2)
    return voice
