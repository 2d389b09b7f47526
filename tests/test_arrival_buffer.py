"""realtime/arrival_buffer.py: a caller's audio packets reach the VAD as they arrive, whatever the
network lost or reordered (aiortc's own buffer holds them back, and after a loss 280 ms back for good)."""
from __future__ import annotations

from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from realtime.arrival_buffer import ArrivalBuffer


def packet(seq: int) -> RtpPacket:
    p = RtpPacket(payload_type=111, sequence_number=seq % 65536, timestamp=(960 * seq) % 2**32, payload=bytes([seq % 256]))
    p._data = p.payload  # what the receiver sets: the depacketized payload
    return p


def released(buffer: JitterBuffer, seqs: list[int]) -> list[int | None]:
    """For each arriving packet, the payload byte of the frame handed on (None: nothing)."""
    out = []
    for seq in seqs:
        _, frame = buffer.add(packet(seq))
        out.append(None if frame is None else frame.data[0])
    return out


def test_each_packet_is_handed_on_when_it_arrives() -> None:
    assert released(ArrivalBuffer(), [10, 11, 12, 13]) == [10, 11, 12, 13]
    # aiortc's audio default holds 4 packets (80 ms) back: the first comes out with the fifth
    assert released(JitterBuffer(capacity=16, prefetch=4), [10, 11, 12, 13, 14]) == [None] * 4 + [10]


def test_a_lost_packet_is_skipped_and_adds_no_delay() -> None:
    buffer = ArrivalBuffer()
    seqs = [0, 1, 2] + list(range(4, 40))  # 3 never arrives
    assert released(buffer, seqs) == [s % 256 for s in seqs]
    assert (buffer.lost, buffer.late, buffer.released) == (1, 0, len(seqs))


def test_aiortc_buffer_after_a_lost_packet_stays_280_ms_behind() -> None:
    """Why the buffer is replaced (aiortc issue #543), with a prefetch of 1 as with its default 4:
    after the loss, each arrival releases a packet 14 arrivals old, for the rest of the call."""
    seqs = [0, 1, 2] + list(range(4, 60))
    for prefetch in (1, 4):
        out = released(JitterBuffer(capacity=16, prefetch=prefetch), seqs)
        assert out[-1] == 59 - 14 and out[-10] == 50 - 14


def test_a_reordered_or_duplicated_packet_is_dropped_not_played_out_of_order() -> None:
    buffer = ArrivalBuffer()
    assert released(buffer, [0, 1, 3, 2, 4, 4, 5]) == [0, 1, 3, None, 4, None, 5]
    assert (buffer.lost, buffer.late) == (1, 2)


def test_sequence_numbers_wrap_and_a_restarted_sender_is_followed() -> None:
    buffer = ArrivalBuffer()
    assert released(buffer, [65534, 65535, 65536, 65537]) == [254, 255, 0, 1]
    assert buffer.lost == 0
    # far behind the last packet: a new stream (a sender that restarted), not a late packet
    assert released(buffer, [30000, 30001]) == [30000 % 256, 30001 % 256]
