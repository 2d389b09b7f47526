"""`step-realtime serve --workers 2 --haproxy` for real: a parent, two worker processes (fake
stages) and a real HAProxy. New sessions go to the worker with room (agent-check weights, drain
when full); WebRTC answers carry the worker's own candidates and the call works through the entry;
a worker killed mid-call ends only its own calls and new calls still succeed; a drained worker
gets no new calls and finishes its own; SIGTERM stops everything with exit code 0.
Under CI=true a missing haproxy fails these tests (tests/conftest.py)."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from contextlib import asynccontextmanager

import aiohttp
import psutil

from tests.cluster_util import Cluster
from tests.realtime_util import WAIT, WsClient, utterance, wait_until
from tests.webrtc_util import Caller, SyntheticMic, mic_audio

BASE_SETS = ["server.drain_grace_s=3"]


@asynccontextmanager
async def running_cluster(*sets: str):
    cluster = Cluster(2, [*BASE_SETS, *sets])
    try:
        await cluster.start()
        yield cluster
    finally:
        await asyncio.to_thread(cluster.stop)


@asynccontextmanager
async def realtime(http: aiohttp.ClientSession, base: str):
    """A Realtime WebSocket session at `base` (the entry, or one worker's own URL)."""
    client = WsClient(await http.ws_connect(f"{base}/v1/realtime"))
    try:
        await client.next("session.created")
        yield client
    finally:
        await client.close()


async def one_turn(client: WsClient) -> None:
    await client.send_audio(utterance())
    assert (await client.next("response.done"))["response"]["status"] == "completed"


async def test_new_sessions_go_to_the_worker_with_room() -> None:
    async with running_cluster("server.max_sessions=4") as cluster, aiohttp.ClientSession() as http:
        w0 = cluster.workers["w0"].url
        async with realtime(http, w0), realtime(http, w0):  # half of w0, behind HAProxy's back
            await cluster.until(lambda s: s["w0"]["weight"] == "50" and s["w1"]["weight"] == "100",
                                "w0's weight fall to 50 % (its agent: 2 of 4 places taken)")
            async with realtime(http, cluster.entry):  # both have no HAProxy connection: the weight decides
                assert await cluster.sessions(http) == {"w0": 2, "w1": 1}
            async with realtime(http, w0), realtime(http, w0):  # w0 full: its agent says drain
                await cluster.until(lambda s: s["w0"]["status"].startswith("DRAIN"), "w0 drained (full)")
                async with realtime(http, cluster.entry), realtime(http, cluster.entry), \
                        realtime(http, cluster.entry) as c:
                    assert await cluster.sessions(http) == {"w0": 4, "w1": 3}
                    await one_turn(c)
                    async with realtime(http, cluster.entry):
                        assert await cluster.sessions(http) == {"w0": 4, "w1": 4}
                        # both full: a worker's 503 (retried on the other) or, once both agents
                        # said drain, HAProxy's own; either way a Realtime error and Retry-After
                        async with http.get(f"{cluster.entry}/v1/realtime") as r:
                            assert r.status == 503 and r.headers.get("Retry-After")
                            assert "server_busy" in await r.text()
            await cluster.until(lambda s: s["w0"]["status"] == "UP", "w0 back in rotation (room again)")


async def test_webrtc_through_the_entry_sends_media_to_the_worker() -> None:
    async with running_cluster() as cluster, aiohttp.ClientSession() as http:
        caller = Caller(SyntheticMic(mic_audio()))
        try:
            async with http.post(f"{cluster.entry}/v1/realtime/calls", data=await caller.offer(),
                                 headers={"Content-Type": "application/sdp"}) as r:
                assert r.status == 201, await r.text()
                worker = cluster.workers[r.headers["X-Step-Worker"]]
                caller.location = r.headers["Location"]
                answer = await r.text()
            # the answer's candidates are the worker's own UDP sockets: media goes to it, not HAProxy
            ports = {int(m.group(1)) for m in re.finditer(r"a=candidate:\S+ \d+ udp \d+ \S+ (\d+) typ host", answer)}
            owned = {c.laddr.port for c in psutil.Process(worker.pid).net_connections(kind="udp")}
            assert ports and ports <= owned, (ports, owned)
            await caller.answer(answer)
            assert (await caller.next("response.done"))["response"]["status"] == "completed"
            await wait_until(lambda: caller.loud_frames >= 10, what="reply audio from the worker")
            # the hangup finds the call's worker: HAProxy remembered the id from the answer
            table = await _show_table(cluster.stats_socket)
            assert caller.location.rsplit("/", 1)[1] in table
            async with http.post(f"{cluster.entry}{caller.location}/hangup") as r:
                assert r.status == 200 and r.headers["X-Step-Worker"] == worker.name
            # the operator's view of the entry (python -m realtime.cluster STATS_SOCKET)
            shown = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "realtime.cluster",
                                                             cluster.stats_socket], capture_output=True, text=True)
            assert shown.returncode == 0 and re.search(r"^w0 +UP ", shown.stdout, re.M), shown.stdout + shown.stderr
        finally:
            await caller.close()


async def _show_table(stats_socket: str) -> str:
    reader, writer = await asyncio.open_unix_connection(stats_socket)
    writer.write(b"show table step_workers\n")
    await writer.drain()
    text = (await reader.read()).decode()
    writer.close()
    return text


async def test_a_killed_worker_ends_only_its_own_calls() -> None:
    async with running_cluster() as cluster, aiohttp.ClientSession() as http:
        async with realtime(http, cluster.entry) as a, realtime(http, cluster.entry) as b:
            assert await cluster.sessions(http) == {"w0": 1, "w1": 1}  # leastconn: one each
            victim = cluster.workers["w0"]
            os.kill(victim.pid, signal.SIGKILL)
            done, _ = await asyncio.wait({a._reader, b._reader}, timeout=WAIT * 2,
                                         return_when=asyncio.FIRST_COMPLETED)
            assert len(done) == 1, "the killed worker's call sees its connection close"
            alive = [c for c in (a, b) if c._reader not in done]
            await one_turn(alive[0])  # the other worker's call goes on
            for _ in range(3):  # new calls succeed at once (a refused connection is retried elsewhere)
                async with realtime(http, cluster.entry) as c:
                    await one_turn(c)
        await asyncio.to_thread(cluster.wait_for, lambda: cluster.workers["w0"].restarts >= 1,
                                "the supervisor to restart w0")
        assert cluster.workers["w0"].pid != victim.pid
        await cluster.until(lambda s: s["w0"]["status"] == "UP", "the restarted w0 back in rotation")


async def test_a_draining_worker_gets_no_new_calls_and_finishes_its_own() -> None:
    async with running_cluster() as cluster, aiohttp.ClientSession() as http:
        async with realtime(http, cluster.entry) as mine:
            (busy,) = [w for w, n in (await cluster.sessions(http)).items() if n == 1]
            other = "w1" if busy == "w0" else "w0"
            async with http.post(f"{cluster.entry}/admin/drain") as r:
                assert r.status == 403  # not from outside
            async with http.post(f"{cluster.workers[busy].url}/admin/drain") as r:
                assert r.status == 200
            await cluster.until(lambda s: s[busy]["status"].startswith("DRAIN"), f"{busy} draining")
            async with realtime(http, cluster.entry), realtime(http, cluster.entry), realtime(http, cluster.entry):
                assert await cluster.sessions(http) == {busy: 1, other: 3}
            await one_turn(mine)  # its own call is served to the end
            # SIGTERM to the parent drains every worker: the call goes on through HAProxy until the
            # grace period (server.drain_grace_s 3 s) is over, is told so, and then closes
            cluster.proc.send_signal(signal.SIGTERM)
            await mine.next("step.session_ending", timeout=WAIT * 2)
            assert (await mine.next("error"))["error"]["code"] == "session_ending"
            await asyncio.wait_for(asyncio.shield(mine._reader), WAIT)
    assert cluster.proc.returncode == 0
    gone = [cluster.haproxy_pid, *(w.pid for w in cluster.workers.values())]
    await wait_until(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                                     for p in gone), what="HAProxy and the workers to exit")
