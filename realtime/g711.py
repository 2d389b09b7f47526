"""ITU-T G.711 μ-law and A-law (the telephone codecs, 8 kHz, one byte a sample) ↔ int16 PCM.

Both directions are table lookups: 256 entries to decode, 65 536 (one per int16 value) to encode,
built once at import with numpy from the standard's segment rules — the same decisions as the
ITU-T G.191 / Sun reference encoder, which Python's old `audioop` also follows (the tests compare
every input value against it). FFmpeg's pcm_mulaw/pcm_alaw encoders (PyAV) round differently at
a few segment edges (one quantization step), which is why they are not used here.
"""
from __future__ import annotations

import numpy as np

MULAW = "audio/pcmu"
ALAW = "audio/pcma"
RATE = 8000  # G.711 is defined at 8 kHz

_BIAS = 0x84  # μ-law: 132 added before the segment search, so segment edges are powers of two
_MULAW_CLIP = 8159  # 14-bit magnitude clip
# Every int16 value, in the order of its uint16 bit pattern: the encode tables are indexed by that.
_ALL_INT16 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)


def _segment(magnitude: np.ndarray, first_end: int) -> np.ndarray:
    """Segment number 0..8 of each magnitude: segments end at first_end, 2·first_end+1, …"""
    ends = (first_end + 1) * (1 << np.arange(8)) - 1
    return np.searchsorted(ends, magnitude, side="left")


def _mulaw_encode_table() -> np.ndarray:
    x = _ALL_INT16 >> 2  # 14-bit
    mask = np.where(x < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(x), _MULAW_CLIP) + (_BIAS >> 2)
    seg = _segment(mag, 0x3F)
    code = np.where(seg >= 8, 0x7F, (seg << 4) | ((mag >> (seg + 1)) & 0xF))
    return (code ^ mask).astype(np.uint8)


def _mulaw_decode_table() -> np.ndarray:
    u = ~np.arange(256) & 0xFF
    t = (((u & 0xF) << 3) + _BIAS) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _BIAS - t, t - _BIAS).astype(np.int16)


def _alaw_encode_table() -> np.ndarray:
    x = _ALL_INT16 >> 3  # 13-bit
    mask = np.where(x >= 0, 0xD5, 0x55)  # A-law inverts the even bits on the line
    mag = np.where(x >= 0, x, -x - 1)
    seg = _segment(mag, 0x1F)
    shift = np.where(seg < 2, 1, seg)
    code = np.where(seg >= 8, 0x7F, (seg << 4) | ((mag >> shift) & 0xF))
    return (code ^ mask).astype(np.uint8)


def _alaw_decode_table() -> np.ndarray:
    a = np.arange(256) ^ 0x55
    seg = (a & 0x70) >> 4
    t = ((a & 0xF) << 4) + np.where(seg == 0, 8, 0x108)
    t = t << np.maximum(seg - 1, 0)
    return np.where(a & 0x80, t, -t).astype(np.int16)


_ENCODE = {MULAW: _mulaw_encode_table(), ALAW: _alaw_encode_table()}
_DECODE = {MULAW: _mulaw_decode_table(), ALAW: _alaw_decode_table()}
SILENCE = {MULAW: 0xFF, ALAW: 0xD5}  # the code of a zero sample


def encode(pcm: np.ndarray, law: str) -> bytes:
    """int16 samples → G.711 bytes (one per sample)."""
    return _ENCODE[law][pcm.astype(np.int16, copy=False).view(np.uint16)].tobytes()


def decode(data: bytes, law: str) -> np.ndarray:
    """G.711 bytes → int16 samples."""
    return _DECODE[law][np.frombuffer(data, dtype=np.uint8)]
