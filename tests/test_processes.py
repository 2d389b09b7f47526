"""core.processes: children die with a parent that is killed without cleaning up (SIGKILL, a
`timeout`, `pkill` of the bench)."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.aio_util import child_dies_with_killed_parent


async def test_a_child_dies_with_its_killed_parent():
    await child_dies_with_killed_parent(
        "import subprocess, time\n"
        "from core.processes import dying_with_parent\n"
        "p = subprocess.Popen(dying_with_parent(['sleep', '600']))\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(600)\n")


async def test_a_killed_bench_leaves_no_server_behind():
    """The bench's server runs in its own session (so that stop() takes its children along); a
    bench killed by `timeout` or `pkill` never calls stop(), and the server must still go."""
    await child_dies_with_killed_parent(
        "import asyncio\n"
        "from bench.server import ServerProcess\n"
        "async def main():\n"
        "    server = ServerProcess('configs/fake.yaml')\n"
        "    await server.start()\n"
        "    print(server.pid, flush=True)\n"
        "    await asyncio.sleep(600)\n"
        "asyncio.run(main())\n")


GRPC_PARENT = '''
import subprocess
from concurrent import futures
import grpc
from core.processes import dying_with_parent
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))  # gRPC's threads are running, as after Ray
port = server.add_insecure_port("127.0.0.1:0")
server.start()
grpc.channel_ready_future(grpc.insecure_channel(f"127.0.0.1:{port}")).result(timeout=30)
print([subprocess.Popen(dying_with_parent(["sleep", "0"])).wait() for _ in range(30)])
'''


def test_children_start_in_a_process_that_runs_grpc():
    """A `preexec_fn` (fork + gRPC's atfork handlers) killed 1 child in 7 here with SIGSEGV/SIGABRT
    before it ran: a llama-server restart after Ray was used failed so in CI. The wrapper never forks."""
    from tests.realtime_util import REPO

    out = subprocess.run([sys.executable, "-c", GRPC_PARENT], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str([0] * 30), out.stdout
