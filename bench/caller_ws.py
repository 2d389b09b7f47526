"""A caller over the Realtime WebSocket: 24 kHz pcm16 appended in real time, 20 ms per append;
reply audio recorded as each response.output_audio.delta arrives (no jitter buffer on this path).
Like any Realtime client, it stops playing queued reply audio on input_audio_buffer.speech_started
(the server may send a reply faster than real time; the client owns the playback).
A refused call (HTTP 503/429, or an admission `error` event) raises measure.Refused."""
from __future__ import annotations

import asyncio
import base64
import json
import time

import aiohttp
import numpy as np

from bench.corpus import Conversation
from bench.measure import REFUSED_STATUS, Playout, Refused, TurnTiming, auth_headers, http_refusal, refusal_reason
from bench.mic import Mic, ScriptOptions, talk

SR = 24_000
AUDIO_DELTAS = ("response.output_audio.delta", "response.audio.delta")


async def call(base_url: str, conv: Conversation, opts: ScriptOptions, max_turns: int | None = None,
               seed: int = 0, progress=None) -> tuple[list[TurnTiming], Playout, list[tuple[float, dict]]]:
    """One conversation. Raises Refused if the server refuses the call (HTTP 503/429 at the
    upgrade, or a refusal `error` event, which ends the call at once)."""
    url = base_url.rstrip("/").replace("http://", "ws://", 1) + "/v1/realtime"
    heard, events, mic, timings = Playout(), [], Mic(SR), []
    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(url, max_msg_size=0, heartbeat=None, headers=auth_headers())
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in REFUSED_STATUS:  # (aiohttp does not keep the body of a failed upgrade)
                raise http_refusal(exc.status, "/v1/realtime", exc.headers) from None
            raise

        async def send_audio() -> None:
            while True:
                frame = await mic.next_frame()
                await ws.send_str(json.dumps({"type": "input_audio_buffer.append",
                                              "audio": base64.b64encode(frame.tobytes()).decode()}))

        async def receive() -> None:
            async for msg in ws:
                t = time.monotonic()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(msg.data)
                kind = event.get("type", "")
                if kind in AUDIO_DELTAS:
                    pcm = np.frombuffer(base64.b64decode(event.get("delta", "")), np.int16)
                    heard.add(pcm, SR, t, event.get("response_id"))
                elif not kind.endswith(".delta"):
                    events.append((t, event))
                    if kind == "input_audio_buffer.speech_started":
                        heard.flush(t)  # as clients are told to: stop playing the reply
                    elif (reason := refusal_reason(event)) is not None:
                        raise Refused(reason, t=t)

        async with ws:
            tasks = [asyncio.create_task(send_audio()), asyncio.create_task(receive())]
            script = asyncio.create_task(talk(conv, mic, heard, opts, max_turns, seed, progress, timings))
            try:
                done, _ = await asyncio.wait([script, *tasks], return_when=asyncio.FIRST_COMPLETED)
                if script not in done:  # the connection ended or failed before the script did
                    script.cancel()
                    await asyncio.gather(script, return_exceptions=True)
                    for task in done:
                        try:
                            task.result()
                        except Refused as exc:
                            raise Refused(exc.reason, timings, heard, events, exc.t) from None
                    raise ConnectionError("the server closed the WebSocket during the conversation")
                script.result()
            finally:
                script.cancel()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(script, *tasks, return_exceptions=True)
    return timings, heard, events
