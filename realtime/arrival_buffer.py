"""The server's receive buffer for a WebRTC caller's audio: every packet is handed on as it arrives.

aiortc's audio receiver keeps a jitter buffer for a player: it holds 4 packets (80 ms) before it
hands out the oldest, and it hands out packets strictly in order, one per arriving packet. The
server plays none of this audio, it feeds the VAD and the ASR, so every millisecond held there is
added to the end-of-speech detection and to every reply. Worse, on a real network: after one lost
packet the buffer waits for it until 16 have piled up, then skips it and goes on releasing one
packet per arrival, so 14 packets (280 ms) stay queued for the rest of the call (aiortc issue
#543; tests/test_arrival_buffer.py). One lost packet in the first minute, which is likely on
Wi-Fi, would make every later reply 0.28 s later.

So each packet is released at once. A packet is only ever dropped when a newer one was already
released: a duplicate, or one that arrives after its successor (reordered). For speech
recognition 20 ms missing is harmless; a late one would be out of order anyway. A lost packet is
simply skipped, as aiortc's decoder would after its buffer overflowed. An Opus or G.711 packet is
one frame, so nothing needs reassembling.
"""
from __future__ import annotations

from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add

RESTART_BEHIND = 100  # a packet this far behind the last one is a restarted sender, not a late one


class ArrivalBuffer(JitterBuffer):
    """Drop-in for aiortc's `JitterBuffer` on an audio receiver (only `add` is called)."""

    def __init__(self) -> None:
        super().__init__(capacity=16)
        self._last: int | None = None  # sequence number of the newest packet released
        self.released = 0
        self.lost = 0  # never arrived (skipped) or arrived too late (dropped): the gaps in the audio
        self.late = 0  # arrived after a newer one was released: dropped

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        if self._last is not None:
            behind = uint16_add(self._last, -seq)  # 0: a duplicate; small: reordered or duplicated
            if behind < RESTART_BEHIND:
                self.late += 1
                return False, None
            ahead = uint16_add(seq, -self._last)
            if ahead < 0x8000:  # forward (not a restart far behind): the packets between are missing
                self.lost += ahead - 1
        self._last = seq
        self.released += 1
        return False, JitterFrame(data=packet._data, timestamp=packet.timestamp)  # type: ignore[attr-defined]
