"""Voice activity detection: per-session speech probability for 20 ms frames of 16 kHz mono."""
from vad.base import FRAME_SAMPLES, SAMPLE_RATE, VoiceActivity, VoiceActivityFactory

__all__ = ["FRAME_SAMPLES", "SAMPLE_RATE", "VoiceActivity", "VoiceActivityFactory"]
