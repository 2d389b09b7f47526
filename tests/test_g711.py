"""G.711 μ-law / A-law: the codec against reference values, against audioop (the Sun/G.191 reference
encoder, tests only) and FFmpeg (PyAV); G.711 input framing; a WebSocket session in audio/pcmu."""
from __future__ import annotations

import base64
import warnings

import av
import numpy as np
import pytest
from openai.types.realtime.realtime_server_event import RealtimeServerEvent
from pydantic import TypeAdapter

from realtime import g711
from realtime.audio import AudioFormatError, G711Input, input_for
from tests.realtime_util import running_server, silence, tone, ws_client

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    audioop = pytest.importorskip("audioop")  # removed in Python 3.13; a reference here only

ALL = np.arange(-32768, 32768, dtype=np.int16)
LAWS = [g711.MULAW, g711.ALAW]
REFERENCE = {g711.MULAW: (audioop.lin2ulaw, audioop.ulaw2lin), g711.ALAW: (audioop.lin2alaw, audioop.alaw2lin)}
FFMPEG = {g711.MULAW: "pcm_mulaw", g711.ALAW: "pcm_alaw"}
# ITU-T G.711 Table 5/6: the "digital milliwatt", 1 kHz at 0 dBm0 sampled at phases π/8, 3π/8, …
DIGITAL_MILLIWATT = {g711.MULAW: bytes.fromhex("1e0b0b1e9e8b8b9e"), g711.ALAW: bytes.fromhex("34212134b4a1a1b4")}


@pytest.mark.parametrize("law, pcm, code", [
    (g711.MULAW, 0, 0xFF), (g711.MULAW, 32767, 0x80), (g711.MULAW, -32768, 0x00),
    (g711.ALAW, 0, 0xD5), (g711.ALAW, 32767, 0xAA), (g711.ALAW, -32768, 0x2A),
])
def test_known_encodings(law: str, pcm: int, code: int) -> None:
    assert g711.encode(np.array([pcm], dtype=np.int16), law) == bytes([code])
    assert g711.SILENCE[law] == g711.encode(np.zeros(1, dtype=np.int16), law)[0]


@pytest.mark.parametrize("law, code, pcm", [
    (g711.MULAW, 0xFF, 0), (g711.MULAW, 0x7F, 0), (g711.MULAW, 0x80, 32124), (g711.MULAW, 0x00, -32124),
    (g711.ALAW, 0xD5, 8), (g711.ALAW, 0x55, -8), (g711.ALAW, 0xAA, 32256), (g711.ALAW, 0x2A, -32256),
])
def test_known_decodings(law: str, code: int, pcm: int) -> None:
    assert g711.decode(bytes([code]), law).tolist() == [pcm]


@pytest.mark.parametrize("law", LAWS)
def test_digital_milliwatt_decodes_to_the_1khz_sine(law: str) -> None:
    d = g711.decode(DIGITAL_MILLIWATT[law], law).astype(float)
    assert d[0] == d[3] and d[1] == d[2] and (d[4:] == -d[:4]).all()
    assert d[0] / d[1] == pytest.approx(np.tan(np.pi / 8), rel=0.05)  # sin(π/8) / sin(3π/8)
    assert g711.encode(d.astype(np.int16), law) == DIGITAL_MILLIWATT[law]


@pytest.mark.parametrize("law", LAWS)
def test_every_value_matches_the_reference_codec(law: str) -> None:
    lin2x, x2lin = REFERENCE[law]
    assert g711.encode(ALL, law) == lin2x(ALL.tobytes(), 2)
    codes = bytes(range(256))
    assert g711.decode(codes, law).tobytes() == x2lin(codes, 2)


@pytest.mark.parametrize("law", LAWS)
def test_agrees_with_ffmpeg(law: str) -> None:
    """FFmpeg decodes identically; its encoder rounds differently at a few segment edges only."""
    dec = av.CodecContext.create(FFMPEG[law], "r")
    dec.sample_rate, dec.layout = 8000, "mono"
    codes = bytes(range(256))
    ffmpeg_pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in dec.decode(av.Packet(codes))])
    assert (g711.decode(codes, law) == ffmpeg_pcm).all()

    enc = av.CodecContext.create(FFMPEG[law], "w")
    enc.sample_rate, enc.layout, enc.format = 8000, "mono", "s16"
    frame = av.AudioFrame.from_ndarray(ALL.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 8000
    ffmpeg_codes = b"".join(bytes(p) for p in enc.encode(frame) + enc.encode(None))
    ours = g711.encode(ALL, law)
    differ = np.frombuffer(ours, np.uint8) != np.frombuffer(ffmpeg_codes, np.uint8)
    assert differ.mean() < 0.02
    gap = np.abs(g711.decode(ours, law).astype(int) - g711.decode(ffmpeg_codes, law).astype(int))
    assert gap.max() <= 1024  # at most one quantization step of the top segment


@pytest.mark.parametrize("law", LAWS)
def test_round_trip_error_is_bounded(law: str) -> None:
    back = g711.decode(g711.encode(ALL, law), law).astype(int)
    err = np.abs(back - ALL.astype(int))
    small = np.abs(ALL.astype(int)) < 1000
    assert err[small].max() <= 64  # fine steps near zero, where speech lives
    assert (err <= np.abs(ALL.astype(int)) / 16 + 64).all()  # ~4-bit mantissa: relative error


def test_g711_input_is_framed_at_16k() -> None:
    pcm = tone(1.0, 8000, freq=300)
    inp = input_for(g711.MULAW, 24_000)  # the rate of audio/pcm does not apply to G.711
    assert isinstance(inp, G711Input) and inp.rate == 8000
    payload = g711.encode(pcm, g711.MULAW)
    frames = []
    for i in range(0, len(payload), 160):  # 20 ms Twilio-sized chunks
        frames += inp.append(base64.b64encode(payload[i:i + 160]).decode())
    assert all(len(f) == 320 and f.dtype == np.int16 for f in frames)
    assert 48 <= len(frames) <= 50
    out = np.concatenate(frames[5:]).astype(float)
    assert 5000 < np.sqrt(np.mean(out ** 2)) < 6000  # 8000 / sqrt(2)
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * 16_000 / len(out) - 300) < 10  # still 300 Hz: rate is right
    with pytest.raises(AudioFormatError, match="base64"):
        inp.append("%%%")


SDK_EVENT = TypeAdapter(RealtimeServerEvent)


@pytest.mark.parametrize("law", LAWS)
async def test_websocket_session_in_g711(law: str) -> None:
    async with running_server() as server, ws_client(server) as c:
        await c.send({"type": "session.update", "session": {"type": "realtime", "audio": {
            "input": {"format": {"type": law}}, "output": {"format": {"type": law}}}}})
        updated = await c.next("session.updated")
        SDK_EVENT.validate_python(updated)
        assert updated["session"]["audio"]["input"]["format"] == {"type": law}
        assert updated["session"]["audio"]["output"]["format"] == {"type": law}
        speech = g711.encode(np.concatenate([tone(1.0, 8000), silence(1.2, 8000)]), law)
        for i in range(0, len(speech), 800):  # 100 ms appends
            await c.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(speech[i:i + 800]).decode()})
        transcript = await c.next("conversation.item.input_audio_transcription.completed")
        assert transcript["transcript"].startswith("w0 w1")  # the tone was heard as speech
        created = await c.next("response.created")
        assert created["response"]["audio"]["output"]["format"] == {"type": law}
        SDK_EVENT.validate_python(created)
        done = await c.next("response.done")
        rid = done["response"]["id"]
        deltas = [base64.b64decode(e["delta"]) for e in c.of_type("response.output_audio.delta")
                  if e["response_id"] == rid]
        audio = g711.decode(b"".join(deltas), law).astype(float)
        said = done["response"]["output"][0]["content"][0]["transcript"]
        # the fake decoder: 0.02 s a character of a 220 Hz tone, one byte per 8 kHz sample
        assert len(audio) / 8000 == pytest.approx(len(said.replace(" ", "")) * 0.02, rel=0.3)
        assert abs(np.argmax(np.abs(np.fft.rfft(audio))) * 8000 / len(audio) - 220) < 10
