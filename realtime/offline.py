"""`step-realtime chat`: recorded questions in, spoken answers out, without a transport.

Step-Audio's offline_inference.py, on our pipeline: each input file is one user turn, driven
through the same Controller a call uses (tokenizer → LLM with the history → decoder; the history is
the context manager's). The controller runs as a Realtime client with `turn_detection: null`
would have it: the file's frames are pushed as fast as they come (no real-time pacing), then the
turn is committed and a response created. So a file with pauses in it stays one turn, and the VAD
is not needed (not built). The output is an AudioOutput that keeps the reply's chunks; each reply
becomes a WAV plus a JSON line (transcript, reply text, stage timings) on stdout and in
<out-dir>/turns.jsonl. Progress goes to stderr.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from context.history import Context
from controller import events as ev
from controller.controller import Controller, Stages
from core.config import ConfigError
from core.stages import BuildEnv, build_stage, close_all, start_all
from decoder.base import AudioChunk
from realtime.audio_files import AudioFileError, read_audio, write_wav
from realtime.config import Config
from vad.base import FRAME_SAMPLES, SAMPLE_RATE

Progress = Callable[[str], None]


class OfflineError(Exception):
    """One line for the person at the terminal; exit_code 2 for bad input, 1 for a failed run."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def build_stages(cfg: Config, kinds: tuple[str, ...], env: BuildEnv,
                       options: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Build and start the named stages from the config, as the server does (core.stages);
    `options` overrides a stage's options. A stage that fails to start is one line, exit 1."""
    stages: dict[str, Any] = {}
    try:
        for kind in kinds:
            section = getattr(cfg, kind)
            stages[kind] = build_stage(kind, section.impl, (options or {}).get(kind) or section.options(), env)
        await start_all(stages)
    except Exception as exc:
        await close_stages(stages, env)
        if isinstance(exc, ConfigError):
            raise
        raise OfflineError(f"cannot start: {type(exc).__name__}: {exc}") from None
    return stages


async def close_stages(stages: dict[str, Any], env: BuildEnv) -> None:
    await close_all(stages)
    for cleanup in env.cleanups:
        await cleanup()


class CollectingOutput:
    """controller.ports.AudioOutput for a file: keeps the reply's chunks; playing is instant."""

    def __init__(self) -> None:
        self.chunks: list[AudioChunk] = []

    def begin_reply(self, response_id: str, item_id: str) -> None:
        self.chunks = []

    def write(self, chunk: AudioChunk) -> None:
        self.chunks.append(chunk)

    def clear(self) -> None:
        self.chunks = []

    def played_seconds(self) -> float:
        return sum(c.seconds for c in self.chunks)

    async def drain(self) -> None:
        return None


def join_chunks(chunks: list[AudioChunk], default_rate: int) -> tuple[np.ndarray, int]:
    """One int16 array at the first chunk's rate (a decoder may mix rates: resampled)."""
    rate = chunks[0].sample_rate if chunks else default_rate
    parts = [c.pcm if c.sample_rate == rate else soxr.resample(c.pcm, c.sample_rate, rate) for c in chunks]
    return (np.concatenate(parts).astype(np.int16) if parts else np.zeros(0, np.int16)), rate


@dataclass
class _Turn:
    """What the controller said during one turn, with wall-clock times."""

    t_commit: float
    item_id: str = ""
    transcript: str | None = None
    t_transcript: float | None = None
    reply: ev.ResponseDone | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def on_event(self, event: object) -> None:
        if isinstance(event, ev.InputCommitted):
            self.item_id = event.item_id
        elif isinstance(event, ev.InputTranscript):
            self.transcript, self.t_transcript = event.text, time.monotonic()
        elif isinstance(event, ev.ResponseDone):
            self.reply = event
        elif isinstance(event, ev.TurnMetrics):
            self.metrics = dict(event.values)
        elif isinstance(event, ev.ErrorEvent):
            self.errors.append(event.message)
        elif isinstance(event, ev.StateChanged) and event.state == "silence":
            self.done.set()  # every way a reply ends goes back to Silence

    def timings(self) -> dict[str, float | None]:
        asr = None if self.t_transcript is None else round((self.t_transcript - self.t_commit) * 1000, 1)
        return {"asr_ms": asr, "llm_first_token_ms": self.metrics.get("llm_ttft_ms"),
                "llm_ms": self.metrics.get("llm_ms"), "tts_first_audio_ms": self.metrics.get("tts_first_audio_ms"),
                "tts_ms": self.metrics.get("tts_ms"), "total_ms": round((time.monotonic() - self.t_commit) * 1000, 1)}


async def run_chat(cfg: Config, inputs: list[str], out_dir: str, progress: Progress = to_stderr,
                   timeout_s: float = 600.0) -> list[dict[str, Any]]:
    """Every input file one turn of one conversation; returns the JSON records (also printed)."""
    audio = [_read_input(path, progress) for path in inputs]  # every file is checked before models load
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OfflineError(f"--out-dir {out}: {exc.strerror or exc}", 2) from None
    progress(f"step-realtime: chat: starting {cfg.tokenizer.impl} → {cfg.llm.impl} → {cfg.decoder.impl}")
    env = BuildEnv(cache_dir=cfg.cache_path)
    stages = await build_stages(cfg, ("tokenizer", "llm", "decoder"), env)
    output = CollectingOutput()
    context = Context(cfg.context.system_prompt, cfg.context.max_prompt_tokens)
    turn = _Turn(0.0)  # rebound per file below; the controller's emit reads the current one
    # vad=None: with turn_detection off the controller never asks it (each file is a whole turn).
    ctrl = Controller(Stages(vad=None, tokenizer=stages["tokenizer"].create(), llm=stages["llm"],  # type: ignore[arg-type]
                             decoder=stages["decoder"]),
                      context, output, lambda event: turn.on_event(event), cfg.controller, session_id="offline")
    ctrl.turn_detection = False
    records: list[dict[str, Any]] = []
    try:
        with (out / "turns.jsonl").open("w", encoding="utf-8") as jsonl:
            for n, (path, pcm) in enumerate(zip(inputs, audio), 1):
                turn = _Turn(0.0)
                record = await _one_turn(ctrl, turn, pcm, timeout_s)
                record = {"turn": n, "in": path, **record}
                if record["status"] == "completed":
                    pcm_out, rate = join_chunks(output.chunks, stages["decoder"].sample_rate)
                    record["out"] = str(out / f"reply_{n:02d}.wav")
                    write_wav(record["out"], pcm_out, rate)
                    record.update(audio_s=round(len(pcm_out) / rate, 3), sample_rate=rate)
                line = json.dumps(record, ensure_ascii=False)
                print(line, flush=True)
                jsonl.write(line + "\n")
                records.append(record)
                progress(_summary(record))
                if record["status"] == "failed":
                    raise OfflineError(f"turn {n} ({path}): {record['error']}")
    finally:
        await ctrl.close()
        await close_stages(stages, env)
    return records


def _read_input(path: str, progress: Progress) -> np.ndarray:
    try:
        audio = read_audio(path, SAMPLE_RATE)
    except AudioFileError as exc:
        raise OfflineError(str(exc), 2) from None
    if audio.conversion():
        progress(f"step-realtime: chat: {path}: {audio.conversion()}")
    return audio.pcm


async def _one_turn(ctrl: Controller, turn: _Turn, pcm: np.ndarray, timeout_s: float) -> dict[str, Any]:
    pad = (-len(pcm)) % FRAME_SAMPLES
    pcm = np.concatenate([pcm, np.zeros(pad, np.int16)]) if pad else pcm
    for i in range(0, len(pcm), FRAME_SAMPLES):
        ctrl.push_audio(pcm[i:i + FRAME_SAMPLES])
        if i % (50 * FRAME_SAMPLES) == 0:
            await asyncio.sleep(0)  # a streaming tokenizer's background work may start meanwhile
    turn.t_commit = time.monotonic()
    try:
        # input_audio_buffer.commit: the whole file is the turn (transcribed / tokenized now), and the
        # tokenizer starts the next file from an empty buffer.
        user = await asyncio.wait_for(ctrl.commit_input(), timeout_s)
        if user is None or (not user.text and not user.audio_tokens):
            if turn.item_id:
                ctrl.delete_item(turn.item_id)  # conversation.item.delete: no empty turn in the history
            return {"status": "empty", "transcript": "", "reply": "",
                    "error": "nothing was understood (no speech in the file?)", "timings": turn.timings()}
        ctrl.create_response()  # response.create: answer from the history, the new turn last
        await asyncio.wait_for(turn.done.wait(), timeout_s)
    except asyncio.TimeoutError:
        return {"status": "failed", "transcript": turn.transcript or "", "reply": "",
                "error": f"no reply within {timeout_s:g} s", "timings": turn.timings()}
    except Exception as exc:  # the tokenizer failed: the error names the stage's problem
        return {"status": "failed", "transcript": "", "reply": "", "error": f"{type(exc).__name__}: {exc}",
                "timings": turn.timings()}
    record: dict[str, Any] = {"transcript": turn.transcript or "", "reply": turn.reply.text if turn.reply else ""}
    if turn.reply is None or turn.reply.status not in ("completed", "incomplete") or turn.errors:
        record.update(status="failed", error="; ".join(turn.errors) or "the reply did not complete")
    else:
        record["status"] = "completed"  # "incomplete" too: spoken, to the last sentence the token limit left
        if turn.reply.status == "incomplete":
            record["cut_at"] = "max_tokens"
    record["timings"] = turn.timings()
    return record


def _summary(record: dict[str, Any]) -> str:
    head = f"step-realtime: chat: turn {record['turn']} ({record['in']}): {record['status']}"
    if record["status"] != "completed":
        return f"{head}: {record.get('error', '')}"
    return f"{head}, {record['audio_s']:.1f} s of reply → {record['out']}"
