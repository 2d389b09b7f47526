"""Phone calls: a Twilio Media Streams WebSocket at GET /v1/telephony/twilio.

Media Streams is the de-facto telephony bridge (Twilio's `<Connect><Stream>`, and the same JSON
is spoken by many SIP gateways). One connection is one call is one session through the same
controller as the other transports. The caller's side sends `connected`, `start` (streamSid,
mediaFormat audio/x-mulaw 8000 Hz mono), `media` (base64 μ-law, 20 ms), `mark` (echoing ours once
the audio before it has played), `dtmf` (→ the session's DTMF event), `stop`. We send `media` (base64 μ-law, 20 ms each), a
`mark` after each decoder chunk, and `clear` on barge-in, which makes Twilio drop what it holds.

Twilio plays what we send in real time and tells us, by echoing marks, how far it got; so what the
caller heard is known to the chunk (interpolated in between), and a reply is over when its last
mark comes back. Malformed input closes the call with a reason (code 1003/1008); other calls are
untouched. Phones cancel little echo, so by default the session's echo canceller is on: the
caller's audio is cleaned at 8 kHz with what we sent, as it plays, for the reference.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

from aiohttp import WSCloseCode, web
from pydantic import BaseModel, ConfigDict, Field

from decoder.base import AudioChunk
from realtime import g711
from realtime.audio import AudioFormatError, G711Input
from realtime.echo import EchoCanceller
from realtime.outputs import Resampler
from realtime.session import ServerContext
from realtime.telephony.calls import CallError, WebSocketCall, parse_field, websocket_route

log = logging.getLogger(__name__)
FRAME_BYTES = 160  # 20 ms of 8 kHz μ-law
MARK_GRACE_S = 1.0  # a bridge that never echoes marks: treat the audio as played this long after its end


class TwilioAudioOutput:
    """AudioOutput → Twilio `media` + `mark` messages (μ-law 8 kHz), `clear` on clear()."""

    echo: EchoCanceller | None = None  # set by the session

    def __init__(self, send: Callable[[dict[str, Any]], None], clock: Callable[[], float] = time.monotonic) -> None:
        self._send = send
        self._clock = clock
        self.stream_sid: str | None = None  # known from the `start` message
        self._rid: str | None = None  # the reply being sent; None after clear()
        self._resample = Resampler(g711.RATE)
        self._seq = 0
        self._sent_s = 0.0  # seconds of this reply sent
        self._acked_s = 0.0  # seconds of this reply whose mark came back (played)
        self._pending: deque[tuple[str, float, float]] = deque()  # (mark name, end second, sent at)
        self._t_ack: float | None = None  # when the last mark came back (or the first media went)
        self._play_end = 0.0  # wall-clock estimate of when the caller's buffer runs dry
        self._frozen: float | None = None
        self._settled = asyncio.Event()  # all marks back, or cleared

    def begin_reply(self, response_id: str, item_id: str) -> None:
        self._rid = response_id
        self._resample = Resampler(g711.RATE)
        self._seq, self._sent_s, self._acked_s, self._t_ack, self._frozen = 0, 0.0, 0.0, None, None
        self._pending.clear()
        self._settled = asyncio.Event()

    def write(self, chunk: AudioChunk) -> None:
        if self._rid is not None:
            self._send_pcm(self._resample(chunk))

    def _send_pcm(self, pcm) -> None:
        if not len(pcm) or self._rid is None or self.stream_sid is None:
            return
        now = self._clock()
        seconds = len(pcm) / g711.RATE
        data = g711.encode(pcm, g711.MULAW)
        for i in range(0, len(data), FRAME_BYTES):  # 20 ms messages, as Twilio itself sends them
            self._send({"event": "media", "streamSid": self.stream_sid,
                        "media": {"payload": base64.b64encode(data[i:i + FRAME_BYTES]).decode("ascii")}})
        self._seq += 1
        name = f"{self._rid}.{self._seq}"
        self._send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})
        self._sent_s += seconds
        self._pending.append((name, self._sent_s, now))
        if self._t_ack is None:
            self._t_ack = now
        start = max(self._play_end, now)
        self._play_end = start + seconds
        if self.echo is not None:  # the reference is what the caller hears: μ-law, decoded
            self.echo.played(g711.decode(data, g711.MULAW), g711.RATE, start)

    def on_mark(self, name: str) -> None:
        """Twilio played everything up to this mark. Marks of older or cleared replies are ignored."""
        if not any(n == name for n, _, _ in self._pending):
            return
        while self._pending:
            n, end_s, _ = self._pending.popleft()
            self._acked_s = end_s
            if n == name:
                break
        self._t_ack = self._clock()
        if not self._pending:
            self._settled.set()

    def clear(self) -> None:
        if self._rid is not None or self._pending:
            self._frozen = self.played_seconds()
            if self._pending and self.stream_sid is not None:
                self._send({"event": "clear", "streamSid": self.stream_sid})
        self._rid = None
        self._pending.clear()
        self._play_end = 0.0
        self._settled.set()
        if self.echo is not None:
            self.echo.clear()

    def played_seconds(self) -> float:
        if self._frozen is not None:
            return self._frozen
        if not self._pending or self._t_ack is None:
            return self._acked_s
        # Between marks: the next chunk has been playing since the last mark (or since it was sent).
        since = max(self._t_ack, self._pending[0][2])
        return min(self._sent_s, self._acked_s + max(0.0, self._clock() - since))

    async def drain(self) -> None:
        self._send_pcm(self._resample.flush())
        settled = self._settled
        while not settled.is_set():
            timeout = self._play_end + MARK_GRACE_S - self._clock()
            if timeout <= 0:
                log.debug("stream %s: marks not echoed; assuming the reply played", self.stream_sid)
                return
            try:
                await asyncio.wait_for(settled.wait(), timeout)
            except asyncio.TimeoutError:
                pass


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class MediaFormat(_Lenient):
    encoding: Literal["audio/x-mulaw"]
    sample_rate: Literal[8000] = Field(alias="sampleRate")
    channels: Literal[1]


class StartInfo(_Lenient):
    stream_sid: str | None = Field(None, alias="streamSid", min_length=1)
    call_sid: str | None = Field(None, alias="callSid")
    custom_parameters: dict[str, Any] = Field(default_factory=dict, alias="customParameters")
    media_format: MediaFormat = Field(alias="mediaFormat")


class Media(_Lenient):
    payload: str
    track: str = "inbound"



class TwilioCall(WebSocketCall):
    """One Media Streams connection: messages in → the session; the output's messages → out."""

    def __init__(self, server: ServerContext, ws: web.WebSocketResponse, reservation=None) -> None:
        outbox: asyncio.Queue = asyncio.Queue()
        super().__init__(server, ws, TwilioAudioOutput(outbox.put_nowait, server.clock), G711Input(g711.MULAW),
                         reservation)
        self.outbox = outbox
        self.call_sid: str | None = None

    def on_binary(self, data: bytes) -> bool:
        raise CallError("binary frames are not part of Media Streams; send JSON text")

    def on_json(self, data: dict) -> bool:
        match data["event"]:
            case "connected":
                pass
            case "start":
                self._start(data)
            case "media":
                self._media(data)
            case "mark":
                mark = data.get("mark")
                if isinstance(mark, dict) and isinstance(mark.get("name"), str):
                    self.output.on_mark(mark["name"])
            case "dtmf":
                dtmf = data.get("dtmf")
                self.dtmf(dtmf.get("digit") if isinstance(dtmf, dict) else None)
            case "stop":
                log.info("session %s: call %s stopped", self.session.id, self.call_sid)
                return False
            case other:  # whatever Twilio adds later: not ours to refuse
                log.debug("session %s: ignoring %r", self.session.id, other)
        return True

    def _start(self, data: dict) -> None:
        if self.output.stream_sid is not None:
            raise CallError("a second 'start' on one stream", WSCloseCode.POLICY_VIOLATION)
        start: StartInfo = parse_field(data, "start", StartInfo)
        sid = start.stream_sid or data.get("streamSid")  # Twilio sends both; some bridges only one
        if not isinstance(sid, str) or not sid:
            raise CallError("start: no streamSid")
        self.output.stream_sid, self.call_sid = sid, start.call_sid
        self.call_id = start.call_sid or sid
        self.add_parameters(start.custom_parameters)  # <Parameter>s of the TwiML <Stream>
        log.info("session %s: call %s, stream %s", self.session.id, start.call_sid, sid)

    def _media(self, data: dict) -> None:
        if self.output.stream_sid is None:
            raise CallError("'media' before 'start'", WSCloseCode.POLICY_VIOLATION)
        media: Media = parse_field(data, "media", Media)
        if media.track != "inbound":  # both_tracks streams also carry what we send: not the caller
            return
        try:
            self.hear(self.session.input.decode(media.payload))
        except AudioFormatError as exc:
            raise CallError(f"media.payload: {exc}") from None


twilio_ws = websocket_route(TwilioCall, "Twilio")
