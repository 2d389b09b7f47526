"""A phone caller without echo cancellation, in simulated time: the bot's reply comes back into its
microphone through an echo path (delay, reverberation, attenuation), over the telephony transport.

The caller drives a TwilioCall directly (no socket, so nothing is in flight between the two sides)
with the fake stages, and owns the clock the server's output and echo canceller read: each 20 ms
step it takes what the server sent so far, plays 20 ms of it, echoes the marks of what has played,
mixes the echo with what the caller says, and sends that as one `media` message. The server's
pairing of reference and echo is then exact and repeatable, however slow the machine.
"""
from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from aiohttp import WSMsgType

from core.stages import BuildEnv, build_all, start_all
from decoder.speech_like import speech_like
from realtime import g711
from realtime.config import load_config
from realtime.session import ServerContext
from realtime.telephony import TwilioCall

RATE, STEP = 8000, 160  # 20 ms of 8 kHz μ-law a message, as Twilio sends it
FAKE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fake.yaml"
REPLY = ("Sure, here is what I found about that question. "
         "It takes only a moment to explain, so let me go through it now.")  # ≈ 2.3 s of fake speech
SETTLE_STEPS = 20  # loop turns after each message: lets the reply task progress (no timers: repeatable)


@dataclass(frozen=True)
class EchoPath:
    """The caller's side: what it plays comes back `delay_ms` later, `level_db` down, reverberant."""
    delay_ms: float
    level_db: float
    rt60_s: float = 0.25  # exponentially decaying noise tail, 60 dB down after this
    seed: int = 0

    def impulse_response(self, rate: int = RATE) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        t = np.arange(int(self.rt60_s * rate)) / rate
        tail = rng.normal(0, 1, len(t)) * np.exp(-6.9 * t / self.rt60_s)
        tail[0] = 3.0  # the direct path stands out of the reverberation
        tail *= 10 ** (self.level_db / 20) / np.sqrt(np.sum(tail ** 2))  # total echo energy: level_db
        return np.concatenate([np.zeros(int(self.delay_ms * rate / 1000)), tail])


class Loopback:
    """Streaming convolution of what the caller plays with the echo path."""

    def __init__(self, path: EchoPath) -> None:
        self.ir = path.impulse_response()
        self.history = np.zeros(len(self.ir) - 1)

    def __call__(self, played: np.ndarray) -> np.ndarray:
        buf = np.concatenate([self.history, played.astype(float)])
        self.history = buf[len(played):]
        return np.convolve(buf, self.ir, "valid")


class SimClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


HEARD_S = 0.5  # a barge-in or speech start within this long of the caller's voice is the caller's


@dataclass
class Counts:
    replies: int = 0  # response.done, any status
    interruptions: int = 0  # the caller talked over a reply ...
    barge_ins: int = 0  # ... and the reply stopped for it (a barge-in: its audio cleared)
    false_barge_ins: int = 0  # replies stopped while the caller was silent: by their own echo
    echo_turns: int = 0  # speech_started while the caller was silent (false barge-ins included)
    echo_in: float = 0.0  # energy of the echo-only input the canceller got (after the first reply) ...
    echo_out: float = 0.0  # ... and what it left of it
    cancel_cpu_s: float = 0.0
    cancel_blocks: int = 0  # 10 ms blocks through the canceller
    barge_in_ms: list = field(default_factory=list)  # from the start of each interruption to the reply's end
    missed: list = field(default_factory=list)  # the turns whose interruption did not stop the reply

    @property
    def erle_db(self) -> float | None:
        """Echo return loss enhancement over the echo-only input (the caller silent)."""
        if not self.echo_out or not self.echo_in:
            return None
        return 10 * np.log10(self.echo_in / self.echo_out)


def config(echo_cancellation: bool, **overrides):
    return load_config(FAKE_CONFIG, {
        "server.echo_cancellation.telephony": echo_cancellation, "llm.echo": False, "llm.reply": REPLY,
        "llm.token_delay_s": 0.0, "decoder.sound": "speech_like", **overrides})


class SimulatedCall:
    def __init__(self, server: ServerContext, path: EchoPath) -> None:
        self.clock = server.clock = SimClock()
        self.call = TwilioCall(server, SimpleNamespace(closed=False))
        self.session = self.call.session
        self.room = Loopback(path)
        self.queue: deque[tuple[str, object]] = deque()  # ("audio", samples) / ("mark", name), in order
        self.counts = Counts()
        self.played_reply_s = 0.0  # of the reply playing now
        self.voice_steps: deque[bool] = deque(maxlen=int(HEARD_S * RATE / STEP))  # the caller talked, recently
        self.measuring = False  # ERLE: from the second reply on (AEC3 converges during the first)
        self.t_interrupt: float | None = None  # when the caller began talking over the reply
        self._wrap_canceller()
        self._send({"event": "start", "streamSid": "MZsim", "start": {
            "streamSid": "MZsim", "callSid": "CAsim",
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})

    def _wrap_canceller(self) -> None:
        """Measure the canceller where it runs: its CPU, and the echo it leaves while the caller is quiet."""
        echo, cancel, counts = self.session.echo, self.session.echo.cancel, self.counts

        def measured(near: np.ndarray) -> np.ndarray:
            t0 = time.process_time()
            out = cancel(near)
            counts.cancel_cpu_s += time.process_time() - t0
            counts.cancel_blocks += len(out) // (echo.rate // 100)
            # echo only: the caller silent for 60 ms (AEC3's output lags its input by a few ms)
            if self.measuring and not any(list(self.voice_steps)[-3:]) and len(out) == len(near):
                counts.echo_in += float(np.sum(near.astype(float) ** 2))
                counts.echo_out += float(np.sum(out.astype(float) ** 2))
            return out
        echo.cancel = measured

    def _send(self, event: dict) -> None:
        self.call.handle(SimpleNamespace(type=WSMsgType.TEXT, data=json.dumps(event)))

    def _receive(self) -> None:
        """What the server sent up to now: into the playback queue (clear empties it, as Twilio does)."""
        while not self.call.outbox.empty():
            msg = self.call.outbox.get_nowait()
            if msg["event"] == "media":
                self.queue.append(("audio", g711.decode(base64.b64decode(msg["media"]["payload"]), g711.MULAW)))
            elif msg["event"] == "mark":
                self.queue.append(("mark", msg["mark"]["name"]))
            elif msg["event"] == "clear":
                for kind, name in [q for q in self.queue if q[0] == "mark"]:
                    self._send({"event": "mark", "streamSid": "MZsim", "mark": {"name": name}})
                self.queue.clear()
        caller_heard = any(self.voice_steps)
        while not self.session.outbox.empty():
            event = json.loads(self.session.outbox.get_nowait())
            if event["type"] == "response.done":
                self.counts.replies += 1
            # The reply is cut (its audio cleared) the moment the barge-in is detected; whether it
            # then ends or resumes (a wordless interruption) is decided later, at response.done.
            elif event["type"] == "step.state" and event["reason"] == "barge_in":
                if caller_heard:
                    self.counts.barge_ins += 1
                    if self.t_interrupt is not None:
                        self.counts.barge_in_ms.append(round((self.clock.t - self.t_interrupt) * 1000))
                        self.t_interrupt = None
                else:
                    self.counts.false_barge_ins += 1
            elif event["type"] == "input_audio_buffer.speech_started" and not caller_heard:
                self.counts.echo_turns += 1

    def _play(self) -> np.ndarray:
        """20 ms of playback; the marks whose audio has all played go back."""
        out, filled = np.zeros(STEP), 0
        while self.queue and (filled < STEP or self.queue[0][0] == "mark"):
            kind, item = self.queue[0]
            if kind == "mark":
                self.queue.popleft()
                self._send({"event": "mark", "streamSid": "MZsim", "mark": {"name": item}})
                continue
            take = min(STEP - filled, len(item))
            out[filled:filled + take] = item[:take]
            filled += take
            if take == len(item):
                self.queue.popleft()
            else:
                self.queue[0] = ("audio", item[take:])
        self.played_reply_s = self.played_reply_s + filled / RATE if filled else 0.0
        return out

    async def step(self, voice: np.ndarray | None = None) -> None:
        """20 ms: play, hear the echo (+ the caller's voice), send it, let the server work."""
        self._receive()
        played = self._play()
        mic = self.room(played)
        self.voice_steps.append(voice is not None)
        if voice is not None:
            mic = mic + voice
        self.clock.t += STEP / RATE
        payload = g711.encode(np.clip(np.round(mic), -32768, 32767).astype(np.int16), g711.MULAW)
        self._send({"event": "media", "streamSid": "MZsim",
                    "media": {"track": "inbound", "payload": base64.b64encode(payload).decode()}})
        for _ in range(SETTLE_STEPS):
            await asyncio.sleep(0)

    async def say(self, voice: np.ndarray) -> None:
        for i in range(0, len(voice), STEP):
            chunk = voice[i:i + STEP].astype(float)
            await self.step(np.pad(chunk, (0, STEP - len(chunk))))

    @property
    def idle(self) -> bool:
        return self.session.controller.state.value == "silence" and not any(k == "audio" for k, _ in self.queue)


def caller_voice(turn: int, seconds: float = 1.0, level_dbfs: float = -20.0) -> np.ndarray:
    """Another voice than the bot's: higher pitched, its own syllables."""
    return speech_like(seconds, RATE, seed=f"caller {turn}", level_dbfs=level_dbfs, pitch_hz=(180.0, 260.0))


async def converse(echo_cancellation: bool, path: EchoPath, replies: int = 20, interrupt: frozenset = frozenset(),
                   interrupt_after_s: float = 0.8, interrupt_s: float = 0.8, max_turn_s: float = 8.0) -> Counts:
    """`replies` caller turns, each answered; on the turns in `interrupt` the caller talks over the
    reply `interrupt_after_s` into it. Between turns the caller waits for the bot and the echo to end."""
    cfg = config(echo_cancellation)
    env = BuildEnv(cache_dir=cfg.cache_path)
    stages = build_all(cfg, env)
    await start_all(stages)
    sim = SimulatedCall(ServerContext(cfg, stages, env.scheduler), path)
    tail_steps = int((path.delay_ms / 1000 + path.rt60_s + 0.3) * RATE / STEP)
    try:
        for turn in range(replies):
            sim.measuring = turn > 0
            await sim.say(caller_voice(turn))
            interrupted, quiet, steps, heard = turn not in interrupt, 0, 0, sim.counts.barge_ins
            while quiet < tail_steps and steps < max_turn_s * RATE / STEP:
                if not interrupted and sim.played_reply_s >= interrupt_after_s:
                    interrupted = True
                    sim.counts.interruptions += 1
                    sim.t_interrupt = sim.clock.t
                    await sim.say(caller_voice(1000 + turn, interrupt_s))
                    continue
                await sim.step()
                steps += 1
                quiet = quiet + 1 if sim.idle else 0
            if turn in interrupt and sim.counts.barge_ins == heard:
                sim.counts.missed.append(turn)
        sim._receive()
    finally:
        await sim.session.close()
    return sim.counts
