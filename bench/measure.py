"""What the caller measures, and how one turn's figures are read from it.

Clock: time.monotonic() (CLOCK_MONOTONIC, one clock for every process on the machine, so a local
server's or echo agent's timestamps can be compared with the caller's).

"Heard": reply audio goes through a zero-latency playout that never plays a sample before it has
arrived, plays all voice in order, and drops silence while it is behind (as adaptive players do,
so a burst of silence frames does not delay what follows for the rest of the call). The moment a sample is heard is therefore
max(arrival of its chunk, end of the audio before it) + its offset in the chunk. Voice-to-voice
latency of a turn = first voiced reply sample heard − last voiced sample of the user's utterance
leaving the caller's microphone. A real device adds its own output latency on top; nothing else.
"""
from __future__ import annotations

import asyncio
import bisect
import json
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

VOICE_DBFS = -50.0  # a 5 ms window louder than this is voice (codec noise / silence is far below)
WINDOW_S = 0.005
_VOICE_RMS = 10 ** (VOICE_DBFS / 20)
GAP_MIN_MS = 5.0  # underruns shorter than this are scheduling noise, not gaps


def as_float(pcm: np.ndarray) -> np.ndarray:
    """int16 or float audio → float32 in [-1, 1], mono (channels averaged)."""
    x = pcm.astype(np.float32)
    if pcm.dtype == np.int16:
        x /= 32768.0
    return x.mean(axis=1) if x.ndim == 2 else x


def voiced_bounds(pcm: np.ndarray, sr: int) -> tuple[float | None, float | None]:
    """Offsets in seconds of the start of the first and the end of the last voiced 5 ms window."""
    x = as_float(pcm)
    win = max(1, int(sr * WINDOW_S))
    n = len(x) // win * win
    if len(x) > n:  # a short tail window counts too
        x = np.concatenate([x, np.zeros(win - (len(x) - n), np.float32)])
    if not len(x):
        return None, None
    rms = np.sqrt(np.mean(x.reshape(-1, win) ** 2, axis=1))
    loud = np.flatnonzero(rms > _VOICE_RMS)
    if not len(loud):
        return None, None
    return loud[0] * win / sr, min((loud[-1] + 1) * win, len(pcm)) / sr


@dataclass
class Chunk:
    t_arrival: float
    t_heard: float  # when its first sample plays
    duration: float
    voice_start: float | None  # offsets in the chunk, seconds
    voice_end: float | None
    underrun: float  # seconds the playout waited for this chunk (0 if it was already queued)
    response_id: str | None = None


class Playout:
    """Records reply audio as it arrives and wakes whoever waits for voice or for quiet."""

    def __init__(self) -> None:
        self.chunks: list[Chunk] = []
        self.cursor = 0.0  # when the audio received so far has finished playing
        self._ends: list[float] = []  # per chunk: when it finishes playing (never decreasing)
        self._last_voice: float | None = None
        self._changed = asyncio.Event()

    def add(self, pcm: np.ndarray, sr: int, t_arrival: float | None = None,
            response_id: str | None = None) -> Chunk:
        t = time.monotonic() if t_arrival is None else t_arrival
        dur = (pcm.shape[0]) / sr
        start, end = voiced_bounds(pcm, sr)
        heard = max(t, self.cursor)
        chunk = Chunk(t, heard, dur, start, end, max(0.0, t - self.cursor), response_id)
        if start is not None or heard == t:
            self.cursor = heard + dur
        if end is not None:
            self._last_voice = heard + end
        self._ends.append(heard + dur)
        # else: silence while behind is dropped (as adaptive players do); voice is never dropped
        self.chunks.append(chunk)
        self._changed.set()
        self._changed = asyncio.Event()
        return chunk

    def first_voice_after(self, t: float) -> float | None:
        # ends of chunks never decrease: start at the first chunk still playing at t
        for c in self.chunks[bisect.bisect_right(self._ends, t):]:
            if c.voice_start is not None and c.t_heard + c.voice_end > t:
                return max(t, c.t_heard + c.voice_start)
        return None

    def last_voice_end(self) -> float | None:
        return self._last_voice

    def flush(self, t: float) -> None:
        """What a Realtime WebSocket client does on input_audio_buffer.speech_started: drop the
        reply audio queued but not yet played at t (WebRTC servers stop sending instead)."""
        for i in range(len(self.chunks) - 1, -1, -1):
            c = self.chunks[i]
            if c.t_heard + c.duration <= t:
                break
            cut = max(0.0, t - c.t_heard)
            if c.voice_start is not None and c.voice_start >= cut:
                c.voice_start = c.voice_end = None
            elif c.voice_end is not None:
                c.voice_end = min(c.voice_end, cut)
            c.duration = cut
            self._ends[i] = c.t_heard + cut
        self.cursor = min(self.cursor, max(t, 0.0))
        voiced = [c for c in self.chunks if c.voice_end is not None]
        self._last_voice = voiced[-1].t_heard + voiced[-1].voice_end if voiced else None

    async def wait_voice_after(self, t: float, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while (found := self.first_voice_after(t)) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 0.1))
            except asyncio.TimeoutError:
                pass
        return found

    async def wait_quiet(self, quiet_s: float, timeout: float) -> bool:
        """Until no voice has been heard for quiet_s (counting audio still queued to play)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = self.last_voice_end() or 0.0
            if time.monotonic() - last >= quiet_s:
                return True
            await asyncio.sleep(0.05)
        return False


@dataclass
class TurnTiming:
    """One utterance as the caller said it (caller clock)."""
    index: int
    conversation: str
    lang: str
    voice: str
    barge_in: bool
    t_speech_start: float
    t_speech_end: float


@dataclass
class TurnRecord:
    caller: int
    conversation: str
    turn: int
    lang: str
    voice: str
    barge_in: bool
    v2v_ms: float | None = None
    reply_ms: float | None = None  # from first to last voiced reply sample heard
    max_gap_ms: float = 0.0
    gaps_over_100ms: int = 0
    jitter_ms: float | None = None
    barge_stop_ms: float | None = None
    interrupted: bool | None = None
    premature: bool = False
    caller_stall_gaps: int = 0  # gaps left out: the caller's own loop was stalled then
    caller_stalled: bool = False  # the caller's loop stalled > 50 ms around this turn's measurement
    response_id: str | None = None
    speculative: bool | None = None
    speculation: list[str] = field(default_factory=list)
    server: dict = field(default_factory=dict)
    error: str | None = None
    refused: bool = False  # the server refused the call (admission), not a turn it failed to answer
    t_speech_end: float | None = None  # caller clock (monotonic): when the user's speech ended

    def as_dict(self) -> dict:
        return asdict(self)


REFUSED_STATUS = (429, 503)  # HTTP statuses of a refused call
REFUSAL_CODES = ("busy", "capacity", "overload", "unavailable", "session_limit", "rate_limit", "too_many")


def refusal_reason(event: dict) -> str | None:
    """A Realtime `error` event that means "not now, too many calls" (admission), or None. Other
    error events are not refusals (they stay in the call's events)."""
    if not isinstance(event, dict) or event.get("type") != "error":
        return None
    err = event.get("error") if isinstance(event.get("error"), dict) else {}
    code = str(err.get("code") or "").lower()
    if any(word in code for word in REFUSAL_CODES):
        return f"error event {code}: {err.get('message') or ''}".strip()
    return None


API_KEY_ENV = "STEP_REALTIME_API_KEY"  # bench --api-key: the key the callers send (caller processes inherit it)


def auth_headers() -> dict[str, str]:
    """The Authorization header for a server with auth on (bench --api-key), else none."""
    key = os.environ.get(API_KEY_ENV)
    return {"Authorization": f"Bearer {key}"} if key else {}


class Refused(ConnectionError):
    """The server refused the call: HTTP 503/429 when connecting, or a refusal `error` event
    (refusal_reason) during it. Carries what had been said and heard until then."""

    def __init__(self, reason: str, timings: list | None = None, heard: "Playout | None" = None,
                 events: list | None = None, t: float | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.timings, self.heard, self.events = reason, timings or [], heard, events or []
        self.t = time.monotonic() if t is None else t
        self.retry_after_s = retry_after_s  # the server's Retry-After, if it said


def http_refusal(status: int, where: str, headers=None, body: str = "") -> Refused:
    """Refused from an HTTP 503/429: the reason in the body's `error` event if there is one."""
    retry = None
    try:
        retry = float((headers or {}).get("Retry-After"))
    except (TypeError, ValueError):
        pass
    message = ""
    try:
        err = json.loads(body).get("error") or {}
        message = str(err.get("message") or err.get("code") or "")
    except (ValueError, AttributeError):
        message = body[:200]
    return Refused(f"HTTP {status} on {where}" + (f": {message}" if message else ""), retry_after_s=retry)


def _runs(chunks: list[Chunk], merge_s: float = 0.25) -> list[tuple[int, int]]:
    """Index ranges of voiced stretches of heard audio; pauses under merge_s stay inside a run."""
    runs: list[list[int]] = []
    last_end = None
    for i, c in enumerate(chunks):
        if c.voice_start is None:
            continue
        if last_end is not None and c.t_heard + c.voice_start - last_end < merge_s:
            runs[-1][1] = i
        else:
            runs.append([i, i])
        last_end = c.t_heard + c.voice_end
    return [(a, b) for a, b in runs]


def _overlaps(t0: float, t1: float, stalls: list[tuple[float, float]], share: float = 0.5) -> bool:
    """Whether the caller's own event loop was stalled for at least `share` of [t0, t1]."""
    return any(min(t1, b) - max(t0, a) >= share * (t1 - t0) for a, b in stalls if b > t0 and a < t1)


def _gaps_and_jitter(chunks: list[Chunk], stalls: list[tuple[float, float]]) -> tuple[list[float], int, float | None]:
    """Underruns (ms) after the first chunk, how many of them were the caller's own stalls (left
    out: another client would not have had them), and RFC 3550 interarrival jitter (ms)."""
    gaps, own = [], 0
    for c in chunks[1:]:
        if c.underrun * 1000 < GAP_MIN_MS:
            continue
        if _overlaps(c.t_arrival - c.underrun, c.t_arrival, stalls):
            own += 1
        else:
            gaps.append(c.underrun * 1000)
    j = 0.0
    for prev, cur in zip(chunks, chunks[1:]):
        d = (cur.t_arrival - prev.t_arrival) - prev.duration
        j += (abs(d) - j) / 16
    return gaps, own, (round(j * 1000, 2) if len(chunks) > 1 else None)


def analyze(caller: int, turns: list[TurnTiming], chunks: list[Chunk], events: list[tuple[float, dict]],
            stalls: list[tuple[float, float]] = ()) -> list[TurnRecord]:
    """Per-turn figures from what one caller said, heard and was told. `stalls`: intervals when
    the caller's own event loop was late (its readings then are not the server's doing)."""
    runs = _runs(chunks)
    records = []
    for i, turn in enumerate(turns):
        nxt = turns[i + 1].t_speech_start if i + 1 < len(turns) else float("inf")
        rec = TurnRecord(caller, turn.conversation, turn.index, turn.lang, turn.voice, turn.barge_in,
                         t_speech_end=turn.t_speech_end)
        # the reply: the first voiced run that begins after the end of the user's speech
        run = next(((a, b) for a, b in runs
                    if chunks[a].t_heard + chunks[a].voice_start > turn.t_speech_end
                    and chunks[a].t_heard + chunks[a].voice_start < nxt), None)
        ongoing = next(((a, b) for a, b in runs if chunks[a].t_heard + chunks[a].voice_start
                        <= turn.t_speech_start < chunks[b].t_heard + chunks[b].voice_end), None)
        if ongoing is not None:
            # the caller spoke into a reply: how long until that reply's audio stopped arriving
            a, b = ongoing
            rec.barge_stop_ms = round((chunks[b].t_heard + chunks[b].voice_end - turn.t_speech_start) * 1000, 1)
            if chunks[b].t_heard + chunks[b].voice_end > turn.t_speech_end:
                rec.error = "reply kept playing through the whole utterance"
        early = any(turn.t_speech_start < chunks[a].t_heard + chunks[a].voice_start <= turn.t_speech_end
                    for a, _ in runs)
        if early:
            rec.premature = True  # the agent spoke during the user's turn (e.g. into a pause)
        if run is None:
            rec.error = rec.error or ("replied before the user finished" if early else "no reply")
        else:
            a, b = run
            first = chunks[a].t_heard + chunks[a].voice_start
            rec.v2v_ms = round((first - turn.t_speech_end) * 1000, 1)
            rec.reply_ms = round((chunks[b].t_heard + chunks[b].voice_end - first) * 1000, 1)
            gaps, rec.caller_stall_gaps, rec.jitter_ms = _gaps_and_jitter(chunks[a:b + 1], list(stalls))
            rec.caller_stalled = any(b_ - a_ > 0.05 for a_, b_ in stalls if a_ < first and b_ > turn.t_speech_end - 0.1)
            rec.max_gap_ms = round(max(gaps, default=0.0), 1)
            rec.gaps_over_100ms = sum(g > 100 for g in gaps)
            rec.response_id = chunks[a].response_id
        _attach_events(rec, turn, nxt, events)
        records.append(rec)
    return records


def _attach_events(rec: TurnRecord, turn: TurnTiming, nxt: float, events: list[tuple[float, dict]]) -> None:
    """The server's own view: which response answered, its stage timings, speculation outcome."""
    window = [(t, e) for t, e in events if turn.t_speech_start <= t < nxt]
    created = [e.get("response", {}).get("id") for _, e in window if e.get("type") == "response.created"]
    if rec.response_id is None and created:
        rec.response_id = created[-1]
    rec.speculation = [e.get("action", "") for _, e in window if e.get("type") == "step.speculation"]
    for _, e in events:
        rid = e.get("response_id") or e.get("response", {}).get("id")
        if rec.response_id is None or rid != rec.response_id:
            continue
        if e.get("type") == "step.turn_metrics":
            rec.speculative = bool(e.get("speculative"))
            rec.server = dict(e.get("values") or {})
    if rec.barge_stop_ms is not None:
        before = [(t, e) for t, e in events if t < turn.t_speech_end + 5 and e.get("type") == "response.done"]
        status = [e.get("response", {}).get("status") for t, e in before if t >= turn.t_speech_start]
        rec.interrupted = ("cancelled" in status) if status else None
        if rec.interrupted is False:  # the reply had finished on its own: nothing was stopped
            rec.barge_stop_ms = None


def refused_records(caller: int, turns: list, refusal: Refused, said: list[TurnRecord] = ()) -> list[TurnRecord]:
    """The turns of a refused call: those said before the refusal keep their figures, except that
    last one, if it was left without a reply (the refusal cut it off), is refused too; the turns never said are
    refused. `turns`: the conversation's utterances (corpus.Utterance)."""
    out = list(said)
    if out and out[-1].v2v_ms is None and out[-1].error == "no reply":  # cut off by the refusal
        out[-1].refused, out[-1].error = True, f"refused: {refusal.reason}"
    done = {rec.turn for rec in out}
    for utt in turns:
        if utt.index not in done:
            out.append(TurnRecord(caller, utt.conversation, utt.index, utt.lang, utt.voice, utt.barge_in,
                                  refused=True, error=f"refused: {refusal.reason}"))
    return out
