"""The model tier: the embedded ASR and TTS as Ray Serve applications (docs/model-tier.md)."""
