"""core/blas.py: once a stage is built, numpy's BLAS runs on one thread (its shared thread pool
hung a Whisper worker under concurrent callers; docs/benchmarks.md)."""
from __future__ import annotations

import numpy  # noqa: F401  (loads its BLAS)
from threadpoolctl import threadpool_info, threadpool_limits

from core.stages import BuildEnv, build_stage


def _blas_threads() -> list[int]:
    return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]


def test_building_a_stage_puts_numpy_blas_on_one_thread(tmp_path):
    threadpool_limits(limits=2, user_api="blas")  # as numpy starts on a 2-core box
    assert _blas_threads() and max(_blas_threads()) == 2
    build_stage("vad", "energy", {}, BuildEnv(tmp_path))
    assert _blas_threads() == [1] * len(_blas_threads())

