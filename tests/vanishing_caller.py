"""A WebRTC caller in its own process, for tests/test_faults.py: it connects to URL (an
aiortc peer with the oai-events channel), prints `connected <session id>` once the session is
up, then only waits. The test freezes it (SIGSTOP): its sockets stay open and never answer,
as when a browser's machine drops off the network (no DTLS close, no hangup, no ICMP)."""
from __future__ import annotations

import asyncio
import sys

import aiohttp

from tests.webrtc_util import Caller, SyntheticMic, mic_audio


async def main(url: str) -> None:
    caller = Caller(SyntheticMic(mic_audio()))
    async with aiohttp.ClientSession() as http:
        await caller.connect(http, url)
    created = await caller.next("session.created", timeout=60)
    print("connected", created["session"]["id"], flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
