"""A phone caller over Twilio's Media Streams protocol (GET /v1/telephony/twilio): μ-law 8 kHz in
20 ms `media` messages in real time, as Twilio sends them; reply audio recorded as it would play
on the phone line. Like Twilio it plays what it is sent in order, in real time, echoes each `mark`
once the audio before it has played (plus a network hop), and drops what is queued on `clear`.

The server's Realtime events do not travel on a phone line, so no step.* events are recorded:
the latency is measured on the audio alone, as for a real phone call. A refused call (HTTP 503/429
at the upgrade) raises measure.Refused."""
from __future__ import annotations

import asyncio
import base64
import json
import time

import aiohttp

from bench.corpus import Conversation
from bench.measure import REFUSED_STATUS, Playout, TurnTiming, auth_headers, http_refusal
from bench.mic import Mic, ScriptOptions, talk
from realtime import g711

SR = 8_000
MARK_HOP_S = 0.03  # the mark travels back over the network after its audio played


async def call(base_url: str, conv: Conversation, opts: ScriptOptions, max_turns: int | None = None,
               seed: int = 0, progress=None) -> tuple[list[TurnTiming], Playout, list[tuple[float, dict]]]:
    url = base_url.rstrip("/").replace("http://", "ws://", 1) + "/v1/telephony/twilio"
    sid = f"MZbench{seed}"
    heard, events, mic, timings = Playout(), [], Mic(SR), []
    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(url, max_msg_size=0, heartbeat=None, headers=auth_headers())
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in REFUSED_STATUS:
                raise http_refusal(exc.status, "/v1/telephony/twilio", exc.headers) from None
            raise
        marks: dict[asyncio.Task, str] = {}  # marks waiting for their audio to play, by name

        async def send(message: dict) -> None:
            await ws.send_str(json.dumps(message))

        async def echo_mark(name: str, at: float) -> None:
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            await send({"event": "mark", "streamSid": sid, "mark": {"name": name}})

        async def send_audio() -> None:
            await send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
            await send({"event": "start", "sequenceNumber": "1", "streamSid": sid,
                        "start": {"accountSid": "ACbench", "streamSid": sid, "callSid": f"CAbench{seed}",
                                  "tracks": ["inbound"], "customParameters": {},
                                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
            n = 0
            while True:
                frame = await mic.next_frame()
                n += 1
                await send({"event": "media", "sequenceNumber": str(n + 1), "streamSid": sid,
                            "media": {"track": "inbound", "chunk": str(n), "timestamp": str(20 * n),
                                      "payload": base64.b64encode(g711.encode(frame, g711.MULAW)).decode()}})

        async def receive() -> None:
            async for msg in ws:
                t = time.monotonic()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(msg.data)
                kind = event.get("event")
                if kind == "media":
                    pcm = g711.decode(base64.b64decode(event["media"]["payload"]), g711.MULAW)
                    heard.add(pcm, SR, t)
                elif kind == "mark":
                    name = event["mark"]["name"]
                    task = asyncio.create_task(echo_mark(name, heard.cursor + MARK_HOP_S))
                    marks[task] = name
                    task.add_done_callback(lambda done: marks.pop(done, None))
                elif kind == "clear":
                    heard.flush(t)
                    for task, name in list(marks.items()):  # Twilio echoes the marks it dropped at once
                        task.cancel()
                        await send({"event": "mark", "streamSid": sid, "mark": {"name": name}})
                    events.append((t, {"type": "twilio.clear"}))

        async with ws:
            tasks = [asyncio.create_task(send_audio()), asyncio.create_task(receive())]
            script = asyncio.create_task(talk(conv, mic, heard, opts, max_turns, seed, progress, timings))
            try:
                done, _ = await asyncio.wait([script, *tasks], return_when=asyncio.FIRST_COMPLETED)
                if script not in done:
                    for task in done:
                        task.result()
                    raise ConnectionError("the server closed the call during the conversation")
                script.result()
                await send({"event": "stop", "streamSid": sid, "stop": {"accountSid": "ACbench",
                                                                         "callSid": f"CAbench{seed}"}})
            finally:
                pending = [script, *tasks, *marks]
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
    return timings, heard, events
