"""Call recordings (server.recordings): a live-paced AudioSocket caller speaks, is answered, talks
over the reply and hangs up; the stereo WAV has both sides where they happened (within 20 ms), the
barge-in cuts the agent's track, and the JSON transcript tells heard from generated text."""
from __future__ import annotations

import json
import time
import wave

import numpy as np

from realtime.telephony.audiosocket import AudioSocketCall
from realtime.telephony.recording import CallRecorder
from tests.carriers_util import asterisk_call
from tests.realtime_util import fake_config, running_server, server_context, silence, tone, wait_until
from tests.telephony_util import assistant_turns

REPLY = "This is a long answer. " * 6


def onset(track: np.ndarray, start: int = 0, level: int = 1000) -> int:
    return start + int(np.argmax(np.abs(track[start:].astype(np.int32)) > level))


async def test_the_recording_is_aligned_and_the_transcript_has_heard_and_generated(tmp_path, monkeypatch) -> None:
    # the server's own log of when caller audio came in and agent audio went out, on its clock
    heard, sent = [], []
    hear, send_frame = AudioSocketCall.hear, AudioSocketCall._send_frame
    monkeypatch.setattr(AudioSocketCall, "hear", lambda self, pcm: (heard.append((time.monotonic(), pcm)),
                                                                    hear(self, pcm))[1])
    monkeypatch.setattr(AudioSocketCall, "_send_frame", lambda self, pcm: (sent.append((time.monotonic(), pcm)),
                                                                           send_frame(self, pcm))[1])
    cfg = fake_config(**{"server.audiosocket": {"host": "127.0.0.1", "port": 0}, "llm.echo": False,
                         "llm.reply": REPLY, "server.recordings": {"dir": str(tmp_path), "max_mb": 5}})
    async with running_server(cfg) as server:
        async with asterisk_call(server) as call:
            await call.speak(silence(0.5, 8000), realtime=True)
            t_click = await call.speak(tone(1.0, 8000), realtime=True)  # its onset is the "click"
            await call.speak(silence(1.2, 8000), realtime=True)
            await call.wait(lambda: len(call.audio) > 50, "a second of the reply")
            t_reply = call.audio[0][0]  # a paced frame arrives as it starts to play
            t_barge = await call.speak(tone(1.0, 8000), realtime=True)  # over the reply
            await call.speak(silence(1.2, 8000), realtime=True)
            await wait_until(lambda: len(assistant_turns(server)) == 2, what="the interruption's reply")
            await call.send_raw(0x00)
            await call.wait(lambda: call.closed_with is not None, "the hangup")
        await wait_until(lambda: not server_context(server).sessions, what="session cleanup")
    wavs = list(tmp_path.glob("*.wav"))
    assert len(wavs) == 1
    with wave.open(str(wavs[0])) as wav:
        assert (wav.getnchannels(), wav.getframerate(), wav.getsampwidth()) == (2, 8000, 2)
        audio = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    caller, agent = audio[:, 0], audio[:, 1]
    click, reply = onset(caller), onset(agent)
    # the reply's onset after the caller's click, as far apart as they were on the server's clock
    # (within 20 ms), and as the caller lived them (plus the loop-back delivery, both ways, on a
    # shared busy machine)
    t_click_srv = next(t for t, pcm in heard if np.abs(pcm).max() > 1000)
    t_reply_srv = next(t for t, pcm in sent if np.abs(pcm).max() > 1000)
    assert abs((reply - click) / 8000 - (t_reply_srv - t_click_srv)) < 0.02
    assert abs((reply - click) / 8000 - (t_reply - t_click)) < 0.08
    barge = onset(caller, click + 8000 * 2)  # the second tone
    assert abs((barge - click) / 8000 - (t_barge - t_click)) < 0.02  # the caller's own stream
    # the barge-in is audible: both talk for a moment, then the agent's track stops (the VAD's onset
    # and the frames sent ahead); the interruption's own reply comes later
    assert np.abs(agent[barge:barge + 800]).max() > 1000
    quiet = agent[barge + 4000:barge + 10_000]  # until the end of the caller's turn
    assert np.abs(quiet).max() < 100
    doc = json.loads(wavs[0].with_suffix(".json").read_text())
    assert doc["channels"] == ["caller", "agent"] and not doc["truncated"]
    users = [t for t in doc["turns"] if t["role"] == "user"]
    replies = [t for t in doc["turns"] if t["role"] == "assistant"]
    assert users[0]["heard"].startswith("w0") and users[0]["start_s"] < users[0]["end_s"]
    cut, second = replies[0], replies[1]
    assert cut["generated"] == REPLY and cut["heard"] != REPLY.strip() and REPLY.startswith(cut["heard"])
    assert cut["status"] == "cancelled" and cut["start_s"] <= cut["audio_start_s"] < cut["end_s"]
    assert abs(cut["audio_start_s"] - reply / 8000) < 0.03
    assert second["heard"] == REPLY.strip()


def test_a_recording_stops_growing_at_its_size(tmp_path) -> None:
    now = [100.0]
    rec = CallRecorder(tmp_path, 0.01, "call", 8000, clock=lambda: now[0])  # ~10 kB: 0.33 s
    for _ in range(100):
        rec.caller(tone(0.02, 8000), 8000)
        rec.played(tone(0.02, 8000), 8000, now[0])
        now[0] += 0.02
    rec.write({})
    with wave.open(str(tmp_path / "call.wav")) as wav:
        assert wav.getnframes() == int(0.01 * 1024 * 1024) // 4
    assert json.loads((tmp_path / "call.json").read_text())["truncated"] is True
