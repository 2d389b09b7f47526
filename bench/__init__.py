"""Load tool: synthetic callers measuring voice-to-voice latency at the caller (see docs/benchmarks.md)."""
