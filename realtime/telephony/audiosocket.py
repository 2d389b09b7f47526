"""Asterisk AudioSocket: phone calls over plain TCP on their own port (config server.audiosocket).

Asterisk's `AudioSocket(uuid,host:port)` dialplan application (or the AudioSocket channel) connects
once per call. Every message both ways is 1 byte kind, 2 bytes big-endian payload length, payload:
0x00 hangup (no payload), 0x01 the call's UUID (16 bytes, first), 0x03 a DTMF digit (1 ASCII byte),
0x10 audio (signed linear 16-bit little-endian, 8 kHz mono; 320 bytes = 20 ms), 0xff an error (its
payload an application-specific code). We send 0x10 frames of 20 ms at the pace they play (Asterisk
buffers little: realtime/telephony/paced.py); there is no "clear", so a barge-in stops within the
few frames sent ahead. Bad input is answered with 0xff carrying the reason as text, then the socket
is closed; a closed socket is a hangup. Admission refuses a call the same way ("server busy").
"""
from __future__ import annotations

import asyncio
import logging
import struct
import uuid

import numpy as np
from aiohttp import web

from realtime.admission import Refused
from realtime.audio import PcmInput
from realtime.session import ServerContext
from realtime.telephony.calls import CallError, PhoneCall, end_call
from realtime.telephony.paced import PacedAudioOutput
from realtime.ws import SERVER_KEY

log = logging.getLogger(__name__)
HANGUP, UUID, DTMF, AUDIO, ERROR = 0x00, 0x01, 0x03, 0x10, 0xFF
RATE = 8000
MAX_AUDIO_BYTES = 2 * RATE  # one second in one message is already far more than Asterisk sends
FIRST_MESSAGE_S = 10.0  # a connection that says nothing is not a call


def message(kind: int, payload: bytes = b"") -> bytes:
    return struct.pack(">BH", kind, len(payload)) + payload


class AudioSocketCall(PhoneCall):
    def __init__(self, server: ServerContext, writer: asyncio.StreamWriter, reservation=None) -> None:
        self.writer = writer
        self.ended: str | None = None  # our own hangup, by call control
        output = PacedAudioOutput(RATE, self._send_frame, None, server.clock)
        super().__init__(server, output, PcmInput(RATE, quality="MQ"), reservation)

    def _send_frame(self, pcm: np.ndarray) -> None:
        self.outbox.put_nowait(message(AUDIO, pcm.astype("<i2").tobytes()))

    async def end(self, reason: str) -> None:
        """Our hangup: 0x00, then the socket closes (the read loop ends on it)."""
        self.ended = reason
        self.writer.write(message(HANGUP))
        await self.writer.drain()
        self.writer.close()

    def handle(self, kind: int, payload: bytes) -> bool:
        """One message; False when the call is over. Raises CallError for bad input."""
        if kind == HANGUP:
            return False
        if kind == UUID:
            if self.call_id is not None:
                raise CallError("a second UUID message")
            if len(payload) != 16:
                raise CallError(f"the UUID message carries 16 bytes, not {len(payload)}")
            self.call_id = str(uuid.UUID(bytes=payload))
            log.info("session %s: AudioSocket call %s", self.session.id, self.call_id)
            return True
        if self.call_id is None:
            raise CallError(f"message kind 0x{kind:02x} before the UUID")
        if kind == AUDIO:
            if not payload or len(payload) % 2 or len(payload) > MAX_AUDIO_BYTES:
                raise CallError(f"audio of {len(payload)} bytes: expected whole 16-bit samples, "
                                f"320 bytes per 20 ms, at most {MAX_AUDIO_BYTES}")
            pcm = np.frombuffer(payload, dtype="<i2").astype(np.int16)
            self.hear(pcm)
        elif kind == DTMF:
            if len(payload) != 1:
                raise CallError(f"the DTMF message carries 1 byte, not {len(payload)}")
            self.dtmf(payload.decode("ascii", "replace"))
        elif kind == ERROR:
            log.warning("session %s: Asterisk reports error %s", self.session.id, payload.hex() or "(no code)")
            return False
        else:
            raise CallError(f"unknown message kind 0x{kind:02x} (0x10 slin 8 kHz is the audio this server takes)")
        return True

    async def send_loop(self) -> None:
        try:
            while True:
                self.writer.write(await self.outbox.get())
                await self.writer.drain()
        except (ConnectionError, RuntimeError):
            log.debug("session %s: send failed, caller gone", self.session.id)


async def _read_message(reader: asyncio.StreamReader, timeout: float | None) -> tuple[int, bytes]:
    header = await asyncio.wait_for(reader.readexactly(3), timeout)
    kind, length = struct.unpack(">BH", header)
    return kind, await asyncio.wait_for(reader.readexactly(length), FIRST_MESSAGE_S) if length else b""


class AudioSocketServer:
    """The TCP listener; one connection is one call."""

    def __init__(self, server: ServerContext, host: str, port: int) -> None:
        self.server, self.host, self.port = server, host, port
        self._listener: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._listener = await asyncio.start_server(self._connection, self.host, self.port)
        self.port = self._listener.sockets[0].getsockname()[1]  # port 0: the one the OS chose
        log.info("AudioSocket on %s:%d", self.host, self.port)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for writer in list(self._writers):  # ends each call's read loop
            writer.close()
        if self._listener is not None:
            await self._listener.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            try:
                reservation = self.server.admission.reserve()
            except Refused as refused:
                writer.write(message(ERROR, f"server busy: {refused.decision.reason}".encode()))
                return
            try:
                await self._call(reader, writer, reservation)
            finally:
                reservation.release()
        finally:
            self._writers.discard(writer)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _call(self, reader, writer, reservation) -> None:
        call = AudioSocketCall(self.server, writer, reservation)
        tasks = [asyncio.create_task(call.send_loop(), name=f"step-as-send-{call.session.id}"),
                 asyncio.create_task(call.discard_events(), name=f"step-as-events-{call.session.id}"),
                 call.output.start()]
        reason = None
        try:
            while call.handle(*await _read_message(reader, FIRST_MESSAGE_S if call.call_id is None else None)):
                pass
        except CallError as exc:
            reason = str(exc)
        except asyncio.TimeoutError:
            reason = "no UUID message in time" if call.call_id is None else "a message was cut off"
        except (asyncio.IncompleteReadError, ConnectionError):
            log.info("session %s: AudioSocket connection closed", call.session.id)
        except Exception:  # a bug ends this call only
            log.exception("session %s: handling an AudioSocket message failed", call.session.id)
            reason = "server error"
        finally:
            await end_call(call, tasks)
        if call.ended is not None or writer.is_closing():
            return
        if reason is not None:
            log.warning("session %s: closing the call: %s", call.session.id, reason)
            writer.write(message(ERROR, reason.encode()[:1000]))
        else:
            writer.write(message(HANGUP))
        try:
            await writer.drain()
        except ConnectionError:
            pass


LISTENER_KEY = web.AppKey("audiosocket", AudioSocketServer)


def install(app: web.Application) -> None:
    """Listen for AudioSocket calls while the app runs, if server.audiosocket is configured."""
    cfg = app[SERVER_KEY].config.server.audiosocket
    if cfg is None:
        return
    listener = app[LISTENER_KEY] = AudioSocketServer(app[SERVER_KEY], cfg.host, cfg.port)

    async def start(_app: web.Application) -> None:
        await listener.start()

    async def stop(_app: web.Application) -> None:
        await listener.close()

    app.on_startup.append(start)  # after the stages start: calls need them
    app.on_shutdown.append(stop)
