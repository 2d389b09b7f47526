"""numpy's BLAS on one thread, for every process that builds stages.

The "wedged ASR worker" of docs/benchmarks.md (a few 4-caller runs in twenty stopped answering
everyone) was caught at last by core/wedge.py's stack dump: the Whisper thread, and each new
worker the guard started after it, stood still in `mel_filters @ magnitudes`, faster-whisper's
log-mel matrix product, i.e. in numpy's OpenBLAS. OpenBLAS runs such a product on its own thread
pool (2 threads here), shared by the whole process; Whisper's features and the turn model's (the
same extractor, on the turn lane's thread) call it from different threads at once, and OpenBLAS's
threaded drivers are known to hang under concurrent callers (OpenMathLib/OpenBLAS#937, #1844,
numpy/numpy#17752). A new thread cannot get past a hung pool. With one BLAS thread the product
runs in the caller's own thread, with nothing to wait for; these products are a few milliseconds.
"""
from __future__ import annotations


def one_blas_thread() -> None:
    """Limit every BLAS library loaded in this process so far (numpy's OpenBLAS; torch's, once a
    Step-Audio stage loaded it) to one thread. Called after each stage is built."""
    import numpy  # noqa: F401  (loads its BLAS, so the limit reaches it)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
