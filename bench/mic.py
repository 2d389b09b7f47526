"""The synthetic caller's microphone and the script that talks through it.

The mic is a real-time source of 20 ms frames — silence unless an utterance is being said — and
notes on the caller's monotonic clock when each utterance's speech started and ended. A frame
leaves when it is complete (like a real capture device): the time of audio sample s in frame k is
send_time(k) − (end of frame k − s). If the machine is slow the mic falls behind and goes on
from there (no catch-up burst); the recorded times say so.
"""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import numpy as np

from bench.corpus import Conversation, Utterance
from bench.measure import Playout, TurnTiming

FRAME_S = 0.02


@dataclass
class _Saying:
    utt: Utterance
    pcm: np.ndarray
    pos: int = 0
    started: asyncio.Future | None = None
    ended: asyncio.Future | None = None


class Mic:
    def __init__(self, sr: int, clock=time.monotonic, sleep=asyncio.sleep) -> None:
        self.sr, self._clock, self._sleep = sr, clock, sleep
        self.frame_len = int(sr * FRAME_S)
        self.frames_sent = 0
        self.stalls = 0
        self._t0: float | None = None
        self._queue: list[_Saying] = []

    def say(self, utt: Utterance) -> _Saying:
        loop = asyncio.get_running_loop()
        s = _Saying(utt, utt.at_rate(self.sr), 0, loop.create_future(), loop.create_future())
        self._queue.append(s)
        return s

    async def next_frame(self) -> np.ndarray:
        """The next 20 ms frame (int16), returned at the moment it is due to leave."""
        if self._t0 is None:
            self._t0 = self._clock()
        due = self._t0 + (self.frames_sent + 1) * FRAME_S
        delay = due - self._clock()
        if delay > 0:
            await self._sleep(delay)
        elif delay < -FRAME_S:
            # Late by more than a frame (a loaded machine): carry on from now rather than send a
            # burst to catch up, which would sit in the server's jitter buffer for the rest of
            # the call. No audio is lost; the times recorded are the real ones.
            self._t0 -= delay
            self.stalls += 1
        frame = np.zeros(self.frame_len, np.int16)
        marks = []
        if self._queue:
            s = self._queue[0]
            piece = s.pcm[s.pos:s.pos + self.frame_len]
            frame[:len(piece)] = piece
            marks.append((s, s.pos))
            s.pos += len(piece)
            if s.pos >= len(s.pcm):
                self._queue.pop(0)
        now = self._clock()
        self.frames_sent += 1
        for s, pos in marks:  # times of the speech start/end samples if they are in this frame
            frame_end_s = (pos + self.frame_len) / self.sr
            for fut, at in ((s.started, s.utt.speech_start_s), (s.ended, s.utt.speech_end_s)):
                if not fut.done() and at <= frame_end_s:
                    fut.set_result(now - (frame_end_s - at))
        return frame


@dataclass
class ScriptOptions:
    reply_timeout_s: float = 8.0  # no voiced reply by then: the turn has no reply
    reply_max_s: float = 20.0  # a reply longer than this is talked over
    quiet_s: float = 1.0  # silence that means the reply has finished
    barge_after_s: float = 0.15  # a barge-in turn starts this long into the reply
    think_s: tuple[float, float] = (0.3, 0.8)  # the caller's pause before its next turn
    lead_in_s: float = 0.6  # silence sent before the first turn (the call settles)
    connect_timeout_s: float = 15.0
    deadline: float | None = None  # time.monotonic() after which no new turn is started


async def talk(conv: Conversation, mic: Mic, heard: Playout, opts: ScriptOptions,
               max_turns: int | None = None, seed: int = 0, progress=None,
               timings: list[TurnTiming] | None = None) -> list[TurnTiming]:
    """Say each turn, wait for the reply (or barge into it), and return when each was said.
    `timings`: a list to fill as it goes (what was said so far, if the call is cut short)."""
    rng = random.Random(seed)
    timings = [] if timings is None else timings
    turns = conv.turns[:max_turns] if max_turns else conv.turns
    deadline = time.monotonic() + opts.connect_timeout_s
    while mic.frames_sent == 0:  # WebRTC: audio flows only once the call is connected
        if time.monotonic() > deadline:
            raise ConnectionError("no audio was taken from the microphone: the call never connected")
        await asyncio.sleep(0.02)
    await asyncio.sleep(opts.lead_in_s)
    for i, utt in enumerate(turns):
        if opts.deadline is not None and time.monotonic() > opts.deadline:
            break
        saying = mic.say(utt)
        start = await saying.started
        end = await saying.ended
        timings.append(TurnTiming(utt.index, conv.name, utt.lang, utt.voice, utt.barge_in, start, end))
        first = await heard.wait_voice_after(end, opts.reply_timeout_s)
        if progress:
            progress(None if first is None else (first - end) * 1000)
        nxt = turns[i + 1] if i + 1 < len(turns) else None
        if first is not None and nxt is not None and nxt.barge_in:
            await asyncio.sleep(max(0.0, first + opts.barge_after_s - time.monotonic()))
            continue
        if first is not None:
            left = opts.reply_max_s if opts.deadline is None else max(1.0, opts.deadline - time.monotonic())
            await heard.wait_quiet(opts.quiet_s, min(opts.reply_max_s, left))
        await asyncio.sleep(rng.uniform(*opts.think_s))
    return timings
