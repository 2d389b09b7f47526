"""A caller over the Realtime WebSocket: 24 kHz pcm16 appended in real time, 20 ms per append;
reply audio recorded as each response.output_audio.delta arrives (no jitter buffer on this path).
Like any Realtime client, it stops playing queued reply audio on input_audio_buffer.speech_started
(the server may send a reply faster than real time; the client owns the playback)."""
from __future__ import annotations

import asyncio
import base64
import json
import time

import aiohttp
import numpy as np

from bench.corpus import Conversation
from bench.measure import Playout, TurnTiming
from bench.mic import Mic, ScriptOptions, talk

SR = 24_000
AUDIO_DELTAS = ("response.output_audio.delta", "response.audio.delta")


async def call(base_url: str, conv: Conversation, opts: ScriptOptions, max_turns: int | None = None,
               seed: int = 0, progress=None) -> tuple[list[TurnTiming], Playout, list[tuple[float, dict]]]:
    url = base_url.rstrip("/").replace("http://", "ws://", 1) + "/v1/realtime"
    heard, events, mic = Playout(), [], Mic(SR)
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0, heartbeat=None) as ws:

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

        tasks = [asyncio.create_task(send_audio()), asyncio.create_task(receive())]
        try:
            script = asyncio.create_task(talk(conv, mic, heard, opts, max_turns, seed, progress))
            done, _ = await asyncio.wait([script, *tasks], return_when=asyncio.FIRST_COMPLETED)
            if script not in done:  # the connection ended or failed before the script did
                script.cancel()
                for task in done:
                    task.result()
                raise ConnectionError("the server closed the WebSocket during the conversation")
            timings = script.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return timings, heard, events
