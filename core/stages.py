"""Stage implementations by name. Imports are lazy so the embedded default never imports torch.

Each entry points at a `build(options: dict, env: BuildEnv)` function in the implementation's
module; it validates its options (core.config.validate_options) and returns the shared,
per-server object: a VoiceActivityFactory, TokenizerFactory, LLMClient or Decoder.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.blas import one_blas_thread
from core.config import ConfigError
from core.scheduler import Scheduler

REGISTRY: dict[str, dict[str, str]] = {
    "vad": {
        "energy": "vad.energy:build",
        "silero": "vad.silero:build",
    },
    "tokenizer": {
        "fake": "streaming_tokenizer.fake:build",
        "whisper": "streaming_tokenizer.whisper:build",
        "step-audio": "streaming_tokenizer.step_audio:build",
        "ray-whisper": "streaming_tokenizer.ray_whisper:build",  # on the model tier (docs/model-tier.md)
    },
    "llm": {
        "fake": "llm.fake:build",
        "openai": "llm.openai_chat:build",
        "step-audio": "llm.step_audio:build",
    },
    "decoder": {
        "fake": "decoder.fake:build",
        "piper": "decoder.piper_tts:build",
        "espeak": "decoder.espeak:build",
        "step-audio": "decoder.step_audio:build",
        "ray-piper": "decoder.ray_piper:build",  # on the model tier (docs/model-tier.md)
    },
    "turn": {  # the end-of-turn model (optional: without it the controller's fixed wait applies)
        "none": "vad.smart_turn:build_none",
        "smart-turn": "vad.smart_turn:build",
        "fake": "vad.fake_turn:build",
    },
}


@dataclass
class BuildEnv:
    """What builders may use besides their options."""

    cache_dir: Path
    cleanups: list[Any] = field(default_factory=list)  # async callables run at shutdown
    scheduler: Scheduler = field(default_factory=Scheduler)  # the model work of all sessions


def build_stage(kind: str, impl: str, options: dict[str, Any], env: BuildEnv) -> Any:
    try:
        target = REGISTRY[kind][impl]
    except KeyError:
        known = ", ".join(sorted(REGISTRY.get(kind, {})))
        raise ConfigError(f"{kind}.impl: unknown implementation {impl!r} (known: {known})") from None
    module_name, func = target.split(":")
    module = importlib.import_module(module_name)
    stage = getattr(module, func)(options, env)
    one_blas_thread()  # stages call numpy from several threads at once (core/blas.py)
    return stage


def build_all(cfg: Any, env: BuildEnv) -> dict[str, Any]:
    """`cfg`: anything with vad/tokenizer/llm/decoder sections and optionally turn
    (core.config.StageConfig)."""
    stages = {
        kind: build_stage(kind, getattr(cfg, kind).impl, getattr(cfg, kind).options(), env)
        for kind in ("vad", "tokenizer", "llm", "decoder")
    }
    turn = getattr(cfg, "turn", None)
    if turn is not None and turn.impl != "none":
        stages["turn"] = build_stage("turn", turn.impl, turn.options(), env)
    return stages


async def start_all(stages: dict[str, Any]) -> None:
    """Start the stages that have a start() (the LLM server, TTS warm-up)."""
    for stage in stages.values():
        if hasattr(stage, "start"):
            await stage.start()


async def close_all(stages: dict[str, Any]) -> None:
    """Close every stage that has a close(), sync or async; one failing does not stop the rest."""
    import asyncio
    import logging

    for stage in stages.values():
        if hasattr(stage, "close"):
            try:
                result = stage.close()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                logging.getLogger(__name__).exception("closing %s failed", type(stage).__name__)
