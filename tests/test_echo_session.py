"""Server-side echo cancellation in a session: a phone caller whose microphone hears the bot's reply
(bench/echo_sim.py: fake stages, speech-like replies, telephony transport, simulated time, so the
counts are repeatable on any machine), and the settings that turn it on and off."""
from __future__ import annotations

import numpy as np
import pytest

from bench.echo_sim import EchoPath, converse
from core.config import ConfigError
from decoder.base import AudioChunk
from realtime import g711
from realtime.outputs import WebRTCAudioOutput, WebSocketAudioOutput
from realtime.telephony import TwilioAudioOutput
from tests.realtime_util import fake_config, running_server, server_context, ws_client

REPLIES = 20


@pytest.mark.parametrize("delay_ms,level_db", [(40, -6), (200, -6), (200, -20)])
async def test_with_aec_the_bots_own_echo_never_barges_in(delay_ms, level_db):
    counts = await converse(True, EchoPath(delay_ms, level_db), REPLIES)
    assert counts.false_barge_ins == 0 and counts.echo_turns == 0
    assert counts.replies == REPLIES  # every turn answered, every answer played to the end


async def test_without_aec_the_echo_barges_in():
    counts = await converse(False, EchoPath(100, -12), REPLIES)
    assert counts.false_barge_ins >= REPLIES // 2  # measured: 120 (the bot answers its own echo, again and again)


async def test_with_aec_a_real_interruption_still_stops_the_reply():
    interrupt = frozenset(range(0, REPLIES, 2))  # another voice over every other reply, the first one too
    counts = await converse(True, EchoPath(100, -12), REPLIES, interrupt=interrupt)
    assert counts.interruptions == len(interrupt)
    assert counts.barge_ins == len(interrupt) and not counts.missed
    assert counts.false_barge_ins == 0 and counts.echo_turns == 0
    assert counts.erle_db is not None and counts.erle_db > 20  # measured: ≈ 35 dB


# -- settings --------------------------------------------------------------------------------------

def test_server_config_defaults_and_validation():
    cfg = fake_config().server.echo_cancellation
    assert (cfg.telephony, cfg.websocket, cfg.webrtc) == (True, False, False)
    assert fake_config(**{"server.echo_cancellation.websocket": True}).server.echo_cancellation.websocket
    with pytest.raises(ConfigError, match="echo_cancellation"):
        fake_config(**{"server.echo_cancellation.sip": True})


async def test_session_update_turns_it_on_and_off():
    async with running_server() as server, ws_client(server) as client:
        created = client.of_type("session.created")[0]
        assert created["session"]["audio"]["input"]["echo_cancellation"] is None  # WebSocket: off by default
        session = next(iter(server_context(server).sessions))
        await client.send({"type": "session.update",
                           "session": {"audio": {"input": {"echo_cancellation": {"type": "aec3"}}}}})
        updated = await client.next("session.updated")
        assert updated["session"]["audio"]["input"]["echo_cancellation"] == {"type": "aec3"}
        assert session.echo.enabled and session.echo.rate == 16_000
        await client.send({"type": "session.update", "session": {"audio": {"input": {
            "format": {"type": "audio/pcmu"}}}}})
        await client.next("session.updated")
        assert session.echo.enabled and session.echo.rate == 8000  # G.711 input: cancelled at 8 kHz
        await client.send({"type": "session.update",
                           "session": {"audio": {"input": {"echo_cancellation": {"type": "speex"}}}}})
        error = await client.next("error")
        assert "echo_cancellation" in error["error"]["param"] and session.echo.enabled
        await client.send({"type": "session.update", "session": {"audio": {"input": {"echo_cancellation": None}}}})
        updated = await client.next("session.updated")
        assert updated["session"]["audio"]["input"]["echo_cancellation"] is None and not session.echo.enabled


# -- the outputs place the reference where it plays ----------------------------------------------

class SpyEcho:
    """Records what an output hands the echo canceller."""

    def __init__(self) -> None:
        self.calls: list = []

    def played(self, pcm, rate, start_s) -> None:
        self.calls.append((pcm.copy(), rate, start_s))

    def clear(self) -> None:
        self.calls.append("clear")


def chunk(seconds: float) -> AudioChunk:
    return AudioChunk(np.full(int(seconds * 16_000), 1000, dtype=np.int16), 16_000, "w")


def test_websocket_output_places_audio_sent_ahead_where_it_will_play():
    now = [10.0]
    out = WebSocketAudioOutput(lambda e: None, 24_000, clock=lambda: now[0])
    out.echo = spy = SpyEcho()
    out.begin_reply("r", "i")
    out.write(chunk(0.2))
    out.write(chunk(0.2))  # sent at once: plays after the first
    now[0] += 1.0
    out.write(chunk(0.2))  # the client ran dry meanwhile: plays now
    (first, r1, s1), (_, _, s2), (_, _, s3) = spy.calls
    assert r1 == 24_000 and s1 == 10.0 and s2 == pytest.approx(10.0 + len(first) / 24_000) and s3 == 11.0
    out.clear()
    assert spy.calls[-1] == "clear"


def test_twilio_output_references_the_decoded_mulaw_it_sent():
    now = [5.0]
    out = TwilioAudioOutput(lambda m: None, clock=lambda: now[0])
    out.stream_sid = "MZ1"
    out.echo = spy = SpyEcho()
    out.begin_reply("r", "i")
    out.write(AudioChunk((np.sin(np.arange(1600) / 5) * 8000).astype(np.int16), 8000, "w"))
    pcm, rate, start = spy.calls[0]
    assert rate == 8000 and start == 5.0
    assert np.array_equal(pcm, g711.decode(g711.encode(pcm, g711.MULAW), g711.MULAW))  # exactly what plays
    out.clear()
    assert spy.calls[-1] == "clear"


async def test_webrtc_track_references_each_frame_as_it_goes_out():
    track = WebRTCAudioOutput()
    track.echo = spy = SpyEcho()
    await track.recv()  # idle: silence, no reference
    assert not spy.calls
    track.begin_reply("r", "i")
    track.write(chunk(0.2))  # ≈ 10 frames at 48 kHz
    for _ in range(3):
        await track.recv()
    starts = [start for _, rate, start in spy.calls if rate == 48_000]
    assert len(starts) == 3 and all(b - a == pytest.approx(0.02) for a, b in zip(starts, starts[1:]))
    track.clear()
    assert spy.calls[-1] == "clear"
    track.stop()
