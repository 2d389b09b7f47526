"""Vonage Voice API WebSocket audio: GET /v1/telephony/vonage.

An NCCO `connect` to `{"type": "websocket", "uri": "wss://…/v1/telephony/vonage",
"content-type": "audio/l16;rate=16000", "headers": {...}}`. Vonage first sends one JSON text message,
`{"event": "websocket:connected", "content-type": "audio/l16;rate=16000", ...the headers}`, then
binary frames of 20 ms signed 16-bit little-endian mono PCM (640 bytes at 16 kHz, 320 at 8 kHz)
both ways; keypresses come as text `{"event": "websocket:dtmf", "digit": "1", "duration": …}`.
We send binary frames at the pace they play (realtime/telephony/paced.py) and, on barge-in, the
text command `{"action": "clear"}`. The call ends when the socket closes.
"""
from __future__ import annotations

import logging
import re

import numpy as np
from aiohttp import WSCloseCode, web

from realtime.audio import PcmInput
from realtime.session import ServerContext
from realtime.telephony.calls import CallError, WebSocketCall, websocket_route
from realtime.telephony.paced import FRAME_S, PacedAudioOutput

log = logging.getLogger(__name__)
CONTENT_TYPE = re.compile(r"^audio/l16;\s*rate=(8000|16000)$", re.IGNORECASE)


class VonageCall(WebSocketCall):
    def __init__(self, server: ServerContext, ws: web.WebSocketResponse, reservation=None) -> None:
        self.rate: int | None = None  # from websocket:connected
        output = PacedAudioOutput(16_000, self._send_frame, self._send_clear, server.clock)
        super().__init__(server, ws, output, PcmInput(16_000), reservation)

    def start_tasks(self):
        return [*super().start_tasks(), self.output.start()]

    def _send_frame(self, pcm: np.ndarray) -> None:
        self.outbox.put_nowait(pcm.astype("<i2").tobytes())

    def _send_clear(self) -> None:
        self.outbox.put_nowait({"action": "clear"})

    def on_json(self, data: dict) -> bool:
        match data["event"]:
            case "websocket:connected":
                self._connected(data)
            case "websocket:dtmf":
                self._require_connected("websocket:dtmf")
                self.dtmf(data.get("digit"))
            case other:  # websocket:cleared, websocket:notify, and whatever Vonage adds later
                log.debug("session %s: ignoring %r", self.session.id, other)
        return True

    def _require_connected(self, what: str) -> None:
        if self.rate is None:
            raise CallError(f"{what} before websocket:connected", WSCloseCode.POLICY_VIOLATION)

    def _connected(self, data: dict) -> None:
        if self.rate is not None:
            raise CallError("a second websocket:connected", WSCloseCode.POLICY_VIOLATION)
        kind = data.get("content-type")
        match = CONTENT_TYPE.match(kind) if isinstance(kind, str) else None
        if match is None:
            raise CallError(f"websocket:connected: content-type {kind!r} is not audio/l16;rate=16000 or 8000")
        self.rate = int(match.group(1))
        if self.rate != 16_000:
            self.output.set_rate(self.rate)
            self.session.set_input(PcmInput(self.rate, quality="MQ"))
        self.call_id = str(data.get("uuid") or data.get("conversation_uuid") or "") or None
        self.add_parameters({k: v for k, v in data.items() if k not in ("event", "content-type")})
        log.info("session %s: Vonage call %s, L16 %d Hz", self.session.id, self.call_id, self.rate)

    def on_binary(self, data: bytes) -> bool:
        self._require_connected("audio")
        frame_bytes = round(self.rate * FRAME_S) * 2
        if not data or len(data) % frame_bytes:
            raise CallError(f"audio frames are {frame_bytes} bytes (20 ms of L16 at {self.rate} Hz); "
                            f"got {len(data)}")
        pcm = np.frombuffer(data, dtype="<i2").astype(np.int16)
        self.hear(pcm)
        return True


vonage_ws = websocket_route(VonageCall, "Vonage")
