"""core.processes: children die with a parent that is killed without cleaning up (SIGKILL, a
`timeout`, `pkill` of the bench)."""
from __future__ import annotations

from tests.aio_util import child_dies_with_killed_parent


async def test_a_child_dies_with_its_killed_parent():
    await child_dies_with_killed_parent(
        "import subprocess, time\n"
        "from core.processes import die_with_parent\n"
        "p = subprocess.Popen(['sleep', '600'], preexec_fn=die_with_parent())\n"
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
