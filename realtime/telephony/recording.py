"""Call recordings and transcripts (opt-in: config server.recordings {dir, max_mb}).

A stereo WAV per call, caller left and agent right, both on the call's clock as the server sees
it: the caller's audio where it arrived (kept a continuous stream: a carrier sends it in real
time), the agent's where it started playing at the caller (the time the outputs hand the echo
canceller); network delays either way are the carrier's and unknown here; and a barge-in silences the agent's track from that moment,
so the recording sounds as the call did. Next to it a JSON transcript: per turn, when it started
and ended on the same clock, what the caller was heard to say, what the agent generated and what
of it was heard. Both are written when the call ends; a recording stops growing at max_mb.
"""
from __future__ import annotations

import json
import logging
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soxr

log = logging.getLogger(__name__)
RESYNC_S = 0.2
CHUNK_S = 30  # the tracks grow by this much at a time


class CallRecorder:
    def __init__(self, directory: str | Path, max_mb: float, name: str, rate: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(directory).expanduser() / name
        self.rate = rate
        self._clock = clock
        self.t0 = clock()
        self._max = int(max_mb * 1024 * 1024) // 4  # stereo int16: 4 bytes a sample pair
        self._tracks = np.zeros((2, rate * CHUNK_S), dtype=np.int16)  # caller, agent
        self._end = 0  # samples in use
        self._caller_at: int | None = None  # where the caller's next sample goes
        self.truncated = False
        self.turns: list[dict[str, Any]] = []
        self._replies: dict[str, dict[str, Any]] = {}
        self._speech: dict[str, float] = {}

    def _now(self) -> float:
        return round(self._clock() - self.t0, 3)

    def _place(self, track: int, at: int, pcm: np.ndarray, rate: int) -> None:
        if rate != self.rate:
            pcm = soxr.resample(pcm, rate, self.rate).astype(np.int16)
        at = max(0, at)
        end = at + len(pcm)
        if end > self._max:
            self.truncated = True
            end = self._max
            pcm = pcm[:max(0, end - at)]
            if not len(pcm):
                return
        if end > self._tracks.shape[1]:
            grown = np.zeros((2, max(end, self._tracks.shape[1] + self.rate * CHUNK_S)), dtype=np.int16)
            grown[:, :self._end] = self._tracks[:, :self._end]
            self._tracks = grown
        self._tracks[track, at:end] = pcm
        self._end = max(self._end, end)

    def caller(self, pcm: np.ndarray, rate: int) -> None:
        """The caller's audio, placed where it arrived: a continuous stream (a carrier sends it in
        real time), re-anchored after a gap, and pulled earlier, 5% at most, toward arrivals that
        come sooner than its place (a late start: the first frames waited for the session)."""
        n = round(len(pcm) * self.rate / rate)
        arrived = max(0, round((self._clock() - self.t0) * self.rate))
        if self._caller_at is None or abs(arrived - self._caller_at) > RESYNC_S * self.rate:
            self._caller_at = arrived
        elif arrived < self._caller_at:
            self._caller_at -= min(self._caller_at - arrived, max(1, n // 20))
        self._place(0, self._caller_at, pcm, rate)
        self._caller_at += n

    # The outputs' reference interface (realtime/echo.py): what plays at the caller, and when.
    def played(self, pcm: np.ndarray, rate: int, start_s: float) -> None:
        self._place(1, round((start_s - self.t0) * self.rate), pcm, rate)
        for reply in self._replies.values():
            reply.setdefault("audio_start_s", round(start_s - self.t0, 3))

    def clear(self) -> None:
        """A barge-in now: what was sent for later never played."""
        cut = max(0, round((self._clock() - self.t0) * self.rate))
        self._tracks[1, cut:] = 0

    def event(self, event: dict[str, Any]) -> None:
        """A Realtime server event of the call's session: the transcript's turns."""
        kind = event.get("type")
        if kind == "input_audio_buffer.speech_started":
            self._speech[event["item_id"]] = self._now()
        elif kind == "input_audio_buffer.speech_stopped":
            self._speech[event["item_id"] + ".end"] = self._now()
        elif kind == "conversation.item.input_audio_transcription.completed":
            iid = event["item_id"]
            self.turns.append({"role": "user", "item_id": iid, "start_s": self._speech.pop(iid, None),
                               "end_s": self._speech.pop(iid + ".end", None), "heard": event["transcript"]})
        elif kind == "input_audio_buffer.dtmf_event_received":
            self.turns.append({"role": "dtmf", "at_s": self._now(), "digit": event["event"]})
        elif kind == "response.created":
            rid = event["response"]["id"]
            self._replies[rid] = {"role": "assistant", "response_id": rid, "start_s": self._now(), "generated": ""}
        elif kind == "response.output_audio_transcript.delta" and event["response_id"] in self._replies:
            self._replies[event["response_id"]]["generated"] += event["delta"]
        elif kind == "response.done":
            response = event["response"]
            reply = self._replies.pop(response["id"], {"role": "assistant", "response_id": response["id"],
                                                        "generated": ""})
            content = (response.get("output") or [{}])[0].get("content") or [{}]
            reply.update(end_s=self._now(), status=response["status"], heard=content[0].get("transcript"))
            self.turns.append(reply)

    def write(self, info: dict[str, Any]) -> None:
        """The WAV and the JSON transcript (blocking: run it in a thread)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with wave.open(str(self.path.with_suffix(".wav")), "wb") as wav:
            wav.setnchannels(2)
            wav.setsampwidth(2)
            wav.setframerate(self.rate)
            wav.writeframes(np.ascontiguousarray(self._tracks[:, :self._end].T).astype("<i2").tobytes())
        doc = {**info, "rate": self.rate, "seconds": round(self._end / self.rate, 3),
               "truncated": self.truncated, "channels": ["caller", "agent"],
               "turns": self.turns + [{**r, "status": "in_progress"} for r in self._replies.values()]}
        self.path.with_suffix(".json").write_text(json.dumps(doc, indent=1, ensure_ascii=False), encoding="utf-8")


class ReferenceTee:
    """The output's reference goes both to the echo canceller and to the recorder."""

    def __init__(self, *sinks) -> None:
        self.sinks = sinks

    def played(self, pcm: np.ndarray, rate: int, start_s: float) -> None:
        for sink in self.sinks:
            sink.played(pcm, rate, start_s)

    def clear(self) -> None:
        for sink in self.sinks:
            sink.clear()
