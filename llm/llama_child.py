"""Entry point of the bundled server's child process: `python -m llm.llama_child <server args>`.

It asks the kernel to SIGTERM it when the parent dies (PR_SET_PDEATHSIG: a SIGKILLed parent runs
no atexit hook), bounds the prompt cache's memory (llm/llama_cache_fix.py), then runs
`llama_cpp.server` with the same arguments.
"""
import ctypes
import os
import runpy
import signal
import sys

if __name__ == "__main__":
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG (Linux)
    if os.getppid() != int(os.environ.get("STEP_REALTIME_PARENT_PID", os.getppid())):
        sys.exit(1)  # the parent died before prctl took effect
    from llm import llama_cache_fix

    llama_cache_fix.apply()
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
