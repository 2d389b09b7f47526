"""The bench's cluster mode (bench/cluster.py): the calls-per-worker count read from real servers'
/metrics, the difference across a level (a restarted worker is unknown, not negative), and the
A/B variants --cluster makes."""
from __future__ import annotations

import pytest

from bench import cluster
from bench.run import parse_args, variants_of
from tests.realtime_util import running_server, ws_client


async def test_sessions_started_counts_what_each_server_started() -> None:
    async with running_server() as a, running_server() as b:
        urls = {"w0": str(a.make_url("/")), "w1": str(b.make_url("/"))}
        before = await cluster.sessions_started(urls)
        async with ws_client(a), ws_client(a), ws_client(b):
            pass
        after = await cluster.sessions_started(urls)
        assert cluster.spread(before, after) == {"w0": 2, "w1": 1}
    assert await cluster.sessions_started({"gone": urls["w0"]}) == {"gone": None}


def test_spread_of_a_restarted_or_silent_worker_is_unknown() -> None:
    assert cluster.spread({"w0": 5, "w1": 3, "w2": None}, {"w0": 1, "w1": 4, "w2": 2}) == \
        {"w0": None, "w1": 1, "w2": None}
    assert cluster.spread_line({"w0": 2, "w1": None}) == "calls per worker w0 2, w1 ?"


def test_cluster_option_makes_an_ab_of_one_server_and_n_workers() -> None:
    single, many = variants_of(parse_args(["--config", "configs/fake.yaml", "--cluster", "3"]))
    assert (single.workers, many.workers) == (0, 3) and single.config == many.config
    # --vs: the workers run another config (the Ray model tier), the single process the first
    single, many = variants_of(parse_args(["--config", "configs/default.yaml", "--cluster", "2", "--vs", "configs/ray.yaml"]))
    assert (single.config, single.workers) == ("configs/default.yaml", 0)
    assert (many.config, many.workers, many.name) == ("configs/ray.yaml", 2, "ray-2workers")
    with pytest.raises(SystemExit):
        parse_args(["--cluster", "2", "--vs", "configs/ray.yaml", "--sustained", "1"])
    (only,) = variants_of(parse_args(["--cluster", "2", "--sustained", "1"]))
    assert only.workers == 2
    (url,) = variants_of(parse_args(["--url", "http://h:1", "--worker-url", "http://h:2", "--worker-url", "http://h:3"]))
    assert url.worker_urls == {"w0": "http://h:2", "w1": "http://h:3"}
