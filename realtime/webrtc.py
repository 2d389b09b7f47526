"""WebRTC the way OpenAI Realtime does it.

POST /v1/realtime/calls with the SDP offer (application/sdp, or multipart/form-data with an
`sdp` part and an optional `session` JSON part, as the openai SDK's calls.create sends) → 201 with
the SDP answer and a Location of /v1/realtime/calls/<id>. Opus both ways. The client's data
channel "oai-events" carries the same JSON events as the WebSocket (no audio deltas: audio rides
the media track). POST /v1/realtime/calls/<id>/hangup ends a call.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging

import aioice.ice
from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from realtime.arrival_buffer import ArrivalBuffer
from realtime.audio import WebRtcInput
from realtime.outputs import WebRTCAudioOutput
from realtime.auth import grant
from realtime.protocol import error_event, new_id
from realtime.session import RealtimeSession, ServerContext
from realtime.admission import Refused, busy
from realtime.ws import SERVER_KEY

log = logging.getLogger(__name__)
CALLS_KEY = web.AppKey("calls", dict)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def use_loopback_candidates() -> None:
    """Offer only 127.0.0.1 host candidates (aioice skips loopback and offers every interface).

    For a server bound to loopback: its peers are on this machine, and no packet should leave
    through another interface. Process-wide, idempotent.
    """
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


def lean_receive_buffer(pc: RTCPeerConnection) -> None:
    """Hand each incoming audio packet on as it arrives (realtime/arrival_buffer.py): the VAD,
    not a player, listens here. Call after setRemoteDescription (the receivers exist) and before
    media flows."""
    for receiver in pc.getReceivers():
        if receiver.track is not None and receiver.track.kind == "audio":
            if not hasattr(receiver, "_RTCRtpReceiver__jitter_buffer"):  # a future aiortc
                log.warning("aiortc's receiver has no jitter buffer to replace; keeping its default")
                return
            receiver._RTCRtpReceiver__jitter_buffer = ArrivalBuffer()


def receive_buffer(receiver) -> object | None:
    """The receiver's buffer (for tests and diagnostics)."""
    return getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)


def ice_configuration(servers: list) -> RTCConfiguration:
    """server.ice_servers (URL strings or IceServer entries with TURN credentials) for aiortc."""
    ice = [RTCIceServer(urls=s) if isinstance(s, str) else
           RTCIceServer(urls=s.urls, username=s.username, credential=s.credential) for s in servers]
    return RTCConfiguration(iceServers=ice)


def _bad(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"type": "invalid_request_error", "message": message}}, status=status)


class _OfferError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _read_limited(stream, limit: int, what: str) -> bytes:
    data = bytearray()
    async for chunk in stream.iter_chunked(16_384):
        data += chunk
        if len(data) > limit:
            raise _OfferError(413, f"{what} is larger than {limit} bytes")
    return bytes(data)


async def _read_offer(request: web.Request, limit: int) -> tuple[str, dict | None]:
    """The SDP offer text and the optional session config, or _OfferError."""
    if request.content_length is not None and request.content_length > 2 * limit:
        raise _OfferError(413, f"request body is larger than {2 * limit} bytes")
    session = None
    if request.content_type == "application/sdp":
        sdp = await _read_limited(request.content, limit, "SDP offer")
    elif request.content_type == "multipart/form-data":
        sdp = b""
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if part.name == "sdp":
                sdp = await _read_part(part, limit, "SDP offer")
            elif part.name == "session":
                try:
                    session = json.loads(await _read_part(part, limit, "session"))
                except ValueError:
                    raise _OfferError(400, "the session part is not valid JSON") from None
    else:
        raise _OfferError(415, f"Content-Type {request.content_type!r} is not supported; "
                               "send application/sdp or multipart/form-data")
    try:
        text = sdp.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise _OfferError(400, "SDP offer is not UTF-8 text") from None
    if not text:
        raise _OfferError(400, "empty SDP offer")
    if not text.startswith("v=0"):
        raise _OfferError(400, "not an SDP offer: it must start with v=0")
    if "m=audio" not in text:
        raise _OfferError(400, "SDP offer has no audio m-line")
    if "opus/48000" not in text.lower():
        raise _OfferError(400, "SDP offer does not offer Opus")
    if "a=fingerprint:" not in text:  # aiortc would answer, then fail the DTLS handshake in the background
        raise _OfferError(400, "invalid SDP offer: no DTLS fingerprint (a=fingerprint)")
    return text + "\r\n", session


def _offer_problem(exc: Exception) -> str:
    """aiortc's ValueErrors name what is wrong with the offer ("RTCP mux is not enabled"); other
    exceptions are its internals tripping over the input, not words for a client."""
    if isinstance(exc, ValueError) and str(exc) and "not in list" not in str(exc):
        return str(exc)
    log.info("offer refused: %r", exc)
    return "it could not be parsed"


async def _read_part(part, limit: int, what: str) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk(16_384):
        data += chunk
        if len(data) > limit:
            raise _OfferError(413, f"{what} is larger than {limit} bytes")
    return bytes(data)


class WebRtcCall:
    def __init__(self, server: ServerContext, pc: RTCPeerConnection, calls: dict, reservation=None) -> None:
        self.id = new_id("rtc")
        self.pc = pc
        self.calls = calls
        self.track_out = WebRTCAudioOutput()
        self.session = RealtimeSession(server, "webrtc", lambda s: self.track_out, reservation)
        self.session.closer = lambda message: self.close()
        self.inbox: asyncio.Queue[str | bytes] = asyncio.Queue()  # bounded in _receive
        self.max_inbox = server.config.server.limits.max_inbound_events
        self.channel_open = False
        self.tasks: set[asyncio.Task] = set()
        self.closed = False
        pc.on("datachannel", self._on_datachannel)
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_connection_state)
        self._spawn(self._handle_events(), "events")
        calls[self.id] = self

    def attach_output(self) -> None:
        """After setRemoteDescription, so the offered audio transceiver carries our track; Opus only."""
        self.pc.addTrack(self.track_out)
        opus = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == "audio/opus"]
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "audio":
                transceiver.setCodecPreferences(opus)

    def _spawn(self, coro, what: str) -> None:
        task = asyncio.create_task(coro, name=f"step-rtc-{what}-{self.session.id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _on_datachannel(self, channel) -> None:
        if channel.label != "oai-events":
            log.info("call %s: ignoring data channel %r", self.id, channel.label)
            return
        channel.on("message", self._receive)
        self.channel_open = True
        self._spawn(self._send_events(channel), "send")

    def _receive(self, message: str | bytes) -> None:
        if self.inbox.qsize() >= self.max_inbox:  # handled one at a time: a flood waits no further
            self.session.send(error_event("invalid_request_error", "too_many_events",
                                          f"{self.max_inbox} events are waiting to be handled; this one was "
                                          "dropped (server.limits.max_inbound_events)"))
            return
        self.inbox.put_nowait(message)

    async def watch_connect(self, timeout_s: float) -> None:
        """A call whose peer never connects, or never opens its oai-events channel, is closed after
        `timeout_s`: its session would otherwise hold a place and memory for good."""
        await asyncio.sleep(timeout_s)
        if self.pc.connectionState != "connected" or not self.channel_open:
            log.info("call %s: not connected after %g s (peer %s, data channel %s); closing", self.id, timeout_s,
                     self.pc.connectionState, "open" if self.channel_open else "never opened")
            await self.close()

    def _on_track(self, track) -> None:
        if track.kind == "audio":
            self._spawn(self._read_audio(track), "audio")

    async def _on_connection_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            log.info("call %s: connection %s", self.id, self.pc.connectionState)
            await self.close()

    async def _handle_events(self) -> None:
        while True:
            await self.session.handle_text(await self.inbox.get())

    async def _send_events(self, channel) -> None:
        while channel.readyState in ("connecting", "open"):
            data = await self.session.outbox.get()
            if channel.readyState != "open":
                break
            channel.send(data)

    async def _read_audio(self, track) -> None:
        convert = WebRtcInput(self.session.echo)
        try:
            while True:
                frame = await track.recv()
                self.session.push_frames(convert.frames(frame))
        except MediaStreamError:  # the caller's track ended: the call is over
            log.info("call %s: remote audio ended", self.id)
        await self.close()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.calls.pop(self.id, None)
        current = asyncio.current_task()
        for task in list(self.tasks):
            if task is not current:
                task.cancel()
        await asyncio.gather(*(t for t in self.tasks if t is not current), return_exceptions=True)
        await self.session.close()
        self.track_out.stop()
        await self.pc.close()
        log.info("call %s: closed", self.id)


async def create_call(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    try:
        sdp, session_config = await _read_offer(request, server.config.server.max_sdp_bytes)
    except _OfferError as exc:
        return _bad(exc.status, str(exc))
    try:
        reservation = server.admission.reserve()  # held by the call's session; given back when it closes
    except Refused as refused:
        return busy(refused)
    try:
        pc = RTCPeerConnection(ice_configuration(server.config.server.ice_servers))
        call = WebRtcCall(server, pc, request.app[CALLS_KEY], reservation)
    except BaseException:
        reservation.release()
        raise  # first: aiortc fires "track" in setRemoteDescription
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
    except Exception as exc:  # aiortc raises ValueError and friends on SDP it can't use
        await call.close()
        return _bad(400, f"invalid SDP offer: {_offer_problem(exc)}")
    try:
        lean_receive_buffer(pc)
        call.attach_output()
        for config in (grant(request).session, session_config):  # the client secret's, then the offer's
            if config is not None:
                await call.session.handle_text(json.dumps({"type": "session.update", "session": config}))
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:
        log.info("cannot answer an offer: %r", exc)
        await call.close()
        return _bad(400, "cannot answer this offer: it lacks a usable audio m-line (Opus, ICE and DTLS parameters)")
    call._spawn(call.watch_connect(server.config.server.limits.webrtc_connect_timeout_s), "connect-watch")
    log.info("call %s: session %s from %s", call.id, call.session.id, request.remote)
    return web.Response(status=201, text=pc.localDescription.sdp, content_type="application/sdp",
                        headers={"Location": f"/v1/realtime/calls/{call.id}"})


async def hangup(request: web.Request) -> web.Response:
    call = request.app[CALLS_KEY].get(request.match_info["call_id"])
    if call is None:
        return _bad(404, "no such call")
    await call.close()
    return web.Response(status=200)
