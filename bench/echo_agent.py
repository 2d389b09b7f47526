"""A synthetic agent with a KNOWN delay, to check the bench's own measurement.

It speaks a tone exactly `delay_ms` after the caller's speech ended, as it received it: it finds
the last voiced 5 ms window of the incoming audio (the same rule the corpus uses to mark the end
of speech), waits for `hangover_ms` of silence to know the turn is over (longer than any pause
inside a corpus turn), then schedules the tone at (time that last voiced sample arrived) +
delay_ms, placed sample-exactly in its output. Speech during a reply for `barge_in_ms` stops it.

Same endpoints as the real server, minimally: POST /v1/realtime/calls (WebRTC, "oai-events"),
GET /v1/realtime (WebSocket, pcm16 24 kHz), GET /metrics.json. It reports what it saw in a "bench.echo"
event per reply (its own times on the shared monotonic clock), so a test can split the caller's
measurement into uplink transport + agent delay + downlink transport.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import fractions
import json
import time
import uuid

import numpy as np
from aiohttp import WSMsgType, web

AGENTS: web.AppKey[list] = web.AppKey("agents", list)
PCS: web.AppKey[set] = web.AppKey("pcs", set)
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from bench.caller_webrtc import frame_pcm
from bench.measure import voiced_bounds

TONE_HZ, TONE_AMP = 440.0, 8000


class EchoAgent:
    """Turn logic, independent of the transport. Times are time.monotonic()."""

    def __init__(self, emit, delay_ms: float, hangover_ms: float = 600, barge_in_ms: float = 100,
                 reply_s: float = 1.2) -> None:
        if delay_ms <= hangover_ms:
            raise ValueError("delay_ms must be longer than hangover_ms (the turn must be known over first)")
        self.emit, self.delay, self.hangover = emit, delay_ms / 1000, hangover_ms / 1000
        self.barge_in, self.reply_s = barge_in_ms / 1000, reply_s
        self.last_voice: float | None = None  # arrival time of the last voiced sample heard
        self.voiced_run = 0.0
        self.reply: dict | None = None  # the reply scheduled or playing
        self.replies: list[dict] = []

    def feed(self, pcm: np.ndarray, sr: int, t_arrival: float) -> None:
        dur = pcm.shape[0] / sr
        start, end = voiced_bounds(pcm, sr)
        now_reply = self.reply
        if start is not None:
            self.last_voice = t_arrival - (dur - end)
            self.voiced_run += dur
            if now_reply is not None and now_reply["t_first_sent"] is not None and self.voiced_run >= self.barge_in:
                self._finish("cancelled", t_arrival)
        else:
            self.voiced_run = 0.0
            if self.last_voice is not None and self.reply is None and t_arrival - self.last_voice >= self.hangover:
                self._schedule(self.last_voice)

    def _schedule(self, speech_end: float) -> None:
        rid = "resp_" + uuid.uuid4().hex[:12]
        self.reply = {"response_id": rid, "t_speech_end_received": speech_end, "t_due": speech_end + self.delay,
                      "t_first_sent": None, "lateness_s": None, "sent": 0}
        self.last_voice = None
        self.emit({"type": "response.created", "response": {"id": rid, "status": "in_progress"}})

    def _finish(self, status: str, t: float) -> None:
        r, self.reply = self.reply, None
        r["status"], r["t_done"] = status, t
        self.replies.append(r)
        self.emit({"type": "response.done", "response": {"id": r["response_id"], "status": status}})
        self.emit({"type": "bench.echo", **{k: v for k, v in r.items()}})
        self.emit({"type": "step.turn_metrics", "response_id": r["response_id"], "speculative": False,
                   "values": {"end_of_turn_delay_ms": self.hangover * 1000,
                              "eot_to_first_audio_ms": round((self.delay - self.hangover) * 1000, 1)}})

    def render(self, t_play: float, n: int, sr: int) -> np.ndarray:
        """Output samples for [t_play, t_play + n/sr): the tone where it is due, else silence."""
        out = np.zeros(n, np.int16)
        r = self.reply
        if r is None or (r["t_first_sent"] is None and r["t_due"] >= t_play + n / sr):
            return out
        if r["t_first_sent"] is None:  # the tone starts in this chunk, at its due sample if not late
            offset = max(0, int(round((r["t_due"] - t_play) * sr)))
            r["t_first_sent"] = t_play + offset / sr
            r["lateness_s"] = max(0.0, t_play - r["t_due"])
        else:
            offset = 0
        total = int(self.reply_s * sr)
        k = np.arange(r["sent"], min(total, r["sent"] + n - offset))
        out[offset:offset + len(k)] = (TONE_AMP * np.sin(2 * np.pi * TONE_HZ * k / sr)).astype(np.int16)
        r["sent"] += len(k)
        if r["sent"] >= total:
            self._finish("completed", t_play + (offset + len(k)) / sr)
        return out


class EchoTrack(MediaStreamTrack):
    """The agent's voice on WebRTC: 20 ms frames in real time; a frame's audio plays from the
    moment aiortc takes it."""
    kind = "audio"
    SR = 48_000

    def __init__(self, agent: EchoAgent) -> None:
        super().__init__()
        self.agent, self._n, self._t0 = agent, 0, None

    async def recv(self) -> AudioFrame:
        if self._t0 is None:
            self._t0 = time.monotonic()
        delay = self._t0 + self._n * 0.02 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.02:  # late: go on from now, no catch-up burst (it would stay buffered)
            self._t0 -= delay
        n = self.SR // 50
        pcm = self.agent.render(time.monotonic(), n, self.SR)
        frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = self.SR, self._n * n, fractions.Fraction(1, self.SR)
        self._n += 1
        return frame


def make_app(delay_ms: float, **agent_options) -> web.Application:
    app = web.Application()
    app[AGENTS], app[PCS] = [], set()

    async def calls(request: web.Request) -> web.Response:
        offer = RTCSessionDescription(await request.text(), "offer")
        pc = RTCPeerConnection()
        app[PCS].add(pc)
        channels: list = []

        def emit(event: dict) -> None:
            for ch in channels:
                if ch.readyState == "open":
                    ch.send(json.dumps(event))

        agent = EchoAgent(emit, delay_ms, **agent_options)
        app[AGENTS].append(agent)
        pc.on("datachannel", channels.append)

        @pc.on("track")
        def _track(track) -> None:
            async def pull() -> None:
                try:
                    while True:
                        frame = await track.recv()
                        agent.feed(frame_pcm(frame), frame.sample_rate, time.monotonic())
                except MediaStreamError:
                    pass
            asyncio.ensure_future(pull())

        @pc.on("connectionstatechange")
        async def _state() -> None:
            if pc.connectionState in ("failed", "closed"):
                app[PCS].discard(pc)
                await pc.close()

        await pc.setRemoteDescription(offer)
        pc.addTrack(EchoTrack(agent))
        await pc.setLocalDescription(await pc.createAnswer())
        return web.Response(status=201, text=pc.localDescription.sdp, content_type="application/sdp")

    async def realtime_ws(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        out: asyncio.Queue = asyncio.Queue()
        agent = EchoAgent(out.put_nowait, delay_ms, **agent_options)
        app[AGENTS].append(agent)

        async def speak() -> None:
            """Sends the tone in 20 ms deltas, each when it is due (never ahead of real time)."""
            while True:
                r = agent.reply
                if r is None:
                    await asyncio.sleep(0.02)  # a reply is always scheduled > 100 ms ahead
                    continue
                due = r["t_due"] if r["t_first_sent"] is None else r["t_first_sent"] + r["sent"] / 24_000
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(min(wait, 0.02))
                    continue
                pcm = agent.render(time.monotonic(), 480, 24_000)
                out.put_nowait({"type": "response.output_audio.delta", "response_id": r["response_id"],
                                "delta": base64.b64encode(pcm.tobytes()).decode()})

        async def send() -> None:
            while True:
                await ws.send_str(json.dumps(await out.get()))

        tasks = [asyncio.create_task(speak()), asyncio.create_task(send())]
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    event = json.loads(msg.data)
                    if event.get("type") == "input_audio_buffer.append":
                        pcm = np.frombuffer(base64.b64decode(event["audio"]), np.int16)
                        agent.feed(pcm, 24_000, time.monotonic())
        finally:
            for t in tasks:
                t.cancel()
        return ws

    async def metrics(request: web.Request) -> web.Response:
        return web.json_response({"sessions": len(app[AGENTS]),
                                  "replies": sum(len(a.replies) for a in app[AGENTS])})

    async def shutdown(app: web.Application) -> None:
        await asyncio.gather(*(pc.close() for pc in list(app[PCS])), return_exceptions=True)

    app.router.add_post("/v1/realtime/calls", calls)
    app.router.add_get("/v1/realtime", realtime_ws)
    app.router.add_get("/metrics.json", metrics)  # where the real server serves its JSON view
    app.on_shutdown.append(shutdown)
    return app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="echo agent with a known reply delay (for checking the bench)")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--delay-ms", type=float, default=800)
    a = p.parse_args(argv)
    web.run_app(make_app(a.delay_ms), host="127.0.0.1", port=a.port)


if __name__ == "__main__":
    main()
