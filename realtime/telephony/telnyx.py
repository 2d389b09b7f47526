"""Telnyx media streaming: a WebSocket at GET /v1/telephony/telnyx.

Telnyx's JSON is a sibling of Twilio's (Call Control `streaming_start` with `stream_url` and
`stream_bidirectional_mode: rtp`). Telnyx sends `connected`, `start` (stream_id, call_control_id,
custom_parameters, media_format PCMU or PCMA at 8000 Hz mono), `media` (base64 G.711 RTP payload,
track inbound/outbound), `dtmf` ({digit}), `error`, `stop`. We send `media` (base64, 20 ms each, at
the pace it plays: realtime/telephony/paced.py) and `clear` on barge-in.
"""
from __future__ import annotations

import base64
import logging
from typing import Any, Literal

import numpy as np
from aiohttp import WSCloseCode, web
from pydantic import BaseModel, ConfigDict, Field

from realtime import g711
from realtime.audio import AudioFormatError, G711Input
from realtime.session import ServerContext
from realtime.telephony.calls import CallError, WebSocketCall, parse_field, websocket_route
from realtime.telephony.paced import PacedAudioOutput

log = logging.getLogger(__name__)
LAWS = {"PCMU": g711.MULAW, "PCMA": g711.ALAW}


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class MediaFormat(_Lenient):
    encoding: Literal["PCMU", "PCMA"]
    sample_rate: Literal[8000] = 8000
    channels: Literal[1] = 1


class StartInfo(_Lenient):
    call_control_id: str | None = None
    custom_parameters: dict[str, Any] = Field(default_factory=dict)
    media_format: MediaFormat


class Media(_Lenient):
    payload: str
    track: str = "inbound"



class TelnyxCall(WebSocketCall):
    def __init__(self, server: ServerContext, ws: web.WebSocketResponse, reservation=None) -> None:
        self.law = g711.MULAW  # until `start` says otherwise
        output = PacedAudioOutput(g711.RATE, self._send_frame, self._send_clear, server.clock)
        super().__init__(server, ws, output, G711Input(self.law), reservation)
        self.stream_id: str | None = None

    def start_tasks(self):
        return [*super().start_tasks(), self.output.start()]

    def _send_frame(self, pcm: np.ndarray) -> None:
        payload = base64.b64encode(g711.encode(pcm, self.law)).decode("ascii")
        self.outbox.put_nowait({"event": "media", "stream_id": self.stream_id, "media": {"payload": payload}})

    def _send_clear(self) -> None:
        self.outbox.put_nowait({"event": "clear", "stream_id": self.stream_id})

    def on_json(self, data: dict) -> bool:
        match data["event"]:
            case "connected":
                pass
            case "start":
                self._start(data)
            case "media":
                self._media(data)
            case "dtmf":
                self._require_start("dtmf")
                dtmf = data.get("dtmf")
                self.dtmf(dtmf.get("digit") if isinstance(dtmf, dict) else None)
            case "stop":
                log.info("session %s: Telnyx call %s stopped", self.session.id, self.call_id)
                return False
            case "error":
                log.warning("session %s: Telnyx reports %s", self.session.id, data.get("payload"))
            case other:  # mark echoes, and whatever Telnyx adds later
                log.debug("session %s: ignoring %r", self.session.id, other)
        return True

    def _require_start(self, what: str) -> None:
        if self.stream_id is None:
            raise CallError(f"'{what}' before 'start'", WSCloseCode.POLICY_VIOLATION)

    def _start(self, data: dict) -> None:
        if self.stream_id is not None:
            raise CallError("a second 'start' on one stream", WSCloseCode.POLICY_VIOLATION)
        start: StartInfo = parse_field(data, "start", StartInfo)
        sid = data.get("stream_id")
        if not isinstance(sid, str) or not sid:
            raise CallError("start: no stream_id")
        self.stream_id, self.call_id = sid, start.call_control_id or sid
        law = LAWS[start.media_format.encoding]
        if law != self.law:
            self.law = law
            self.session.set_input(G711Input(law))
        self.add_parameters(start.custom_parameters)
        log.info("session %s: Telnyx call %s, stream %s", self.session.id, self.call_id, sid)

    def _media(self, data: dict) -> None:
        self._require_start("media")
        media: Media = parse_field(data, "media", Media)
        if media.track != "inbound":  # both_tracks also carries what we send: not the caller
            return
        try:
            self.hear(self.session.input.decode(media.payload))
        except AudioFormatError as exc:
            raise CallError(f"media.payload: {exc}") from None


telnyx_ws = websocket_route(TelnyxCall, "Telnyx")
