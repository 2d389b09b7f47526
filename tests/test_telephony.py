"""Telephony: the Twilio Media Streams endpoint end to end (fake stages, a real aiohttp WebSocket
client playing Twilio's part) and TwilioAudioOutput's mark accounting on a fake clock."""
from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import numpy as np
import pytest

from decoder.base import AudioChunk
from realtime.telephony import MARK_GRACE_S, TwilioAudioOutput
from tests.realtime_util import WAIT, fake_config, running_server, server_context, silence, tone, wait_until
from tests.telephony_util import (
    ROUTE, SID, START, assistant_turns, reply_audio, twilio_call, utterance_8k,
)

LONG_REPLY = "This is a long answer. " * 12  # ≈ 5 s of fake audio: still playing when interrupted

async def test_a_call_hears_the_reply_in_mulaw() -> None:
    async with running_server() as server, twilio_call(server) as call:
        await call.speak(utterance_8k())
        await wait_until(lambda: assistant_turns(server), what="the reply to finish")
        session = next(iter(server_context(server).sessions))
        assert session.transport == "telephony"
        user, reply = session.context.turns
        assert user.role == "user" and user.text.startswith("w0 w1")  # the μ-law tone was heard
        assert reply.text == f"You said: {user.text}."
        media = call.of("media")
        assert media and all(m["streamSid"] == SID for m in call.received)
        assert all(len(base64.b64decode(m["media"]["payload"])) <= 160 for m in media)  # 20 ms each
        # 20 ms media messages, a mark after each chunk's, all marks named after the one reply
        events = "".join("m" if m["event"] == "media" else "k" for m in call.received)
        assert events.endswith("mk") and "kk" not in events and set(events) == {"m", "k"}
        response_id = call.of("mark")[0]["mark"]["name"].split(".")[0]
        assert all(m["mark"]["name"].startswith(response_id + ".") for m in call.of("mark"))
        audio = reply_audio(call, response_id)
        assert len(audio) / 8000 == pytest.approx(len(reply.text) * 0.02, rel=0.3)
        assert abs(np.argmax(np.abs(np.fft.rfft(audio))) * 8000 / len(audio) - 220) < 10  # 8 kHz, not sped up
        assert not call.of("clear")
        # a second turn in the same call
        await call.speak(utterance_8k(1.4))
        await wait_until(lambda: len(assistant_turns(server)) == 2, what="the second reply")
    await wait_until(lambda: not server_context(server).sessions, what="session cleanup")


async def test_barge_in_sends_clear_and_keeps_what_was_heard() -> None:
    cfg = fake_config(**{"llm.echo": False, "llm.reply": LONG_REPLY})
    async with running_server(cfg) as server, twilio_call(server) as call:
        await call.speak(utterance_8k())
        first = await call.wait_for(lambda m: m["event"] == "media", "reply audio")
        await call.speak(tone(0.6, 8000))  # talk over the reply
        clear = await call.wait_for(lambda m: m["event"] == "clear", "clear")
        assert clear["streamSid"] == SID
        # the interruption (words, so not a cough) is the next user turn; once it ends the cut
        # reply is settled in the history, and the turn gets its own reply after the clear
        await call.speak(silence(1.2, 8000))
        await wait_until(lambda: assistant_turns(server), what="the cut reply in the history")
        heard = assistant_turns(server)[0].text
        assert heard != LONG_REPLY.strip() and LONG_REPLY.startswith(heard)  # a prefix: what was played
        i_clear = call.received.index(clear)
        first_rid = call.of("mark")[0]["mark"]["name"].split(".")[0]
        later = await call.wait_for(lambda m: m["event"] == "mark" and call.received.index(m) > i_clear
                                    and not m["mark"]["name"].startswith(first_rid), "the next reply")
        assert later["mark"]["name"].split(".")[0] != first_rid
        assert call.received.index(first) < i_clear


async def test_stop_ends_the_call() -> None:
    async with running_server() as server, twilio_call(server) as call:
        await wait_until(lambda: server_context(server).sessions, what="the session")
        await call.send({"event": "dtmf", "streamSid": SID, "dtmf": {"track": "inbound_track", "digit": "1"}})
        await call.send({"event": "media", "streamSid": SID, "media": {"track": "outbound", "payload": "!!"}})
        await call.send({"event": "stop", "streamSid": SID, "stop": {"accountSid": "AC1", "callSid": "CA1"}})
        await wait_until(lambda: call.ws.closed, what="the close")
        # the keypress went to the session, the outbound track was ignored; stop ended the call normally
        assert call.ws.close_code == aiohttp.WSCloseCode.OK, call.close_reason
        assert call.close_reason == "call ended"
        await wait_until(lambda: not server_context(server).sessions, what="session cleanup")


async def test_custom_parameters_and_keypresses_reach_the_session() -> None:
    start = {**START, "start": {**START["start"], "customParameters": {"caller": "Ada", "account": "42"}}}
    async with running_server() as server, twilio_call(server, start=False) as call:
        await call.send(start)
        await wait_until(lambda: server_context(server).sessions, what="the session")
        session = next(iter(server_context(server).sessions))
        await wait_until(lambda: "caller: Ada" in session.context.system_prompt, what="the parameters")
        assert "account: 42" in session.settings.instructions
        await call.send({"event": "dtmf", "streamSid": SID, "dtmf": {"track": "inbound_track", "digit": "#"}})
        await wait_until(lambda: any("pressed #" in t.text for t in session.context.turns), what="the keypress")
        await call.send({"event": "dtmf", "streamSid": SID, "dtmf": {"digit": "x"}})
        await wait_until(lambda: call.ws.closed, what="the close")
        assert "not a keypad key" in call.close_reason


async def test_a_language_parameter_sets_the_callers_language(caplog) -> None:
    """One phone number per language: the TwiML's <Parameter name="language"> is the session's
    transcription language; a wrong one is an error (logged) and the call goes on detecting."""
    def start(language: str) -> dict:
        return {**START, "start": {**START["start"], "customParameters": {"language": language}}}

    async with running_server() as server, twilio_call(server, start=False) as call:
        await call.send(start("zh"))
        await wait_until(lambda: server_context(server).sessions, what="the session")
        session = next(iter(server_context(server).sessions))
        await wait_until(lambda: session.controller.stages.tokenizer.language == "zh", what="the language")
        assert session.settings.transcription["language"] == "zh"
    for wrong, why in (("Chinese", "not a lower-case ISO-639 code"), ("xx", "knows no language 'xx'")):
        async with running_server() as server, twilio_call(server, start=False) as call:
            await call.send(start(wrong))
            await wait_until(lambda: "call parameter language: " in caplog.text and why in caplog.text,
                             what="the error")
            session = next(iter(server_context(server).sessions))
            assert session.controller.stages.tokenizer.language is None
            await call.speak(utterance_8k())  # the call goes on
            await wait_until(lambda: assistant_turns(server), what="the reply")
            assert not call.ws.closed


BAD_START = {**START, "start": {**START["start"], "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 16000,
                                                                  "channels": 1}}}


@pytest.mark.parametrize("messages, code, words", [
    (["{not json"], 1003, "not valid JSON"),
    (["[1, 2]"], 1003, "JSON object"),
    ([b"\x00\x01"], 1003, "binary"),
    ([{"event": "media", "media": {"payload": "AAAA"}}], 1008, "before 'start'"),
    ([BAD_START], 1003, "sampleRate"),
    ([{"event": "start", "start": {"streamSid": SID}}], 1003, "mediaFormat"),
    ([{"event": "start", "start": {"mediaFormat": START["start"]["mediaFormat"]}}], 1003, "streamSid"),
    ([START, START], 1008, "second 'start'"),
    ([START, {"event": "media", "streamSid": SID, "media": {"payload": "%%% not base64"}}], 1003, "base64"),
    ([START, {"event": "media", "streamSid": SID, "media": {}}], 1003, "payload"),
])
async def test_bad_input_closes_only_that_call(messages, code: int, words: str) -> None:
    async with running_server() as server, twilio_call(server) as good, twilio_call(server, start=False) as bad:
        for m in messages:
            if isinstance(m, bytes):
                await bad.ws.send_bytes(m)
            else:
                await bad.ws.send_str(m if isinstance(m, str) else json.dumps(m))
        await wait_until(lambda: bad.ws.closed, what="the bad call to be closed")
        assert bad.ws.close_code == code
        assert words in bad.close_reason
        # the other call goes on
        await good.speak(utterance_8k())
        await good.wait_for(lambda m: m["event"] == "mark", "the good call's reply")
        await wait_until(lambda: len(server_context(server).sessions) == 1, what="the bad session's cleanup")


async def test_busy_server_refuses_the_call() -> None:
    async with running_server(fake_config(**{"server.max_sessions": 1})) as server, twilio_call(server):
        await wait_until(lambda: server_context(server).sessions, what="the first session")
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await http.ws_connect(server.make_url(ROUTE))
            assert exc.value.status == 503


# -- TwilioAudioOutput, on a fake clock ---------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def chunk(seconds: float, text: str = "words", rate: int = 16_000) -> AudioChunk:
    return AudioChunk(np.full(int(seconds * rate), 1000, dtype=np.int16), rate, text)


def _replying(*seconds: float) -> tuple[TwilioAudioOutput, list, Clock]:
    """A Twilio output on a test clock, playing one reply of 8 kHz chunks of these lengths (at the
    output's own rate: no resampler delay, exact durations)."""
    sent, clock = [], Clock()
    out = TwilioAudioOutput(sent.append, clock)
    out.stream_sid = SID
    out.begin_reply("resp_1", "item_1")
    for s in seconds:
        out.write(chunk(s, rate=8000))
    return out, sent, clock


async def test_output_counts_played_audio_by_marks() -> None:
    out, sent, clock = _replying(0.5, 0.5)
    assert [m["event"] for m in sent] == (["media"] * 25 + ["mark"]) * 2
    marks = [m["mark"]["name"] for m in sent if m["event"] == "mark"]
    assert out.played_seconds() == 0.0  # nothing has played the instant it was sent
    clock.t += 0.2
    assert out.played_seconds() == pytest.approx(0.2, abs=0.02)  # interpolated
    clock.t += 0.5
    out.on_mark(marks[0])
    assert out.played_seconds() == pytest.approx(0.5, abs=0.02)  # the mark says: first chunk done
    out.on_mark("resp_0.1")  # a stale mark changes nothing
    assert out.played_seconds() == pytest.approx(0.5, abs=0.02)
    drain = asyncio.create_task(out.drain())
    await asyncio.sleep(0)
    assert not drain.done()  # waits for the last mark
    out.on_mark(marks[1])
    await asyncio.wait_for(drain, WAIT)
    assert out.played_seconds() == pytest.approx(1.0, abs=0.02)
    assert not [m for m in sent if m["event"] == "clear"]
    out.clear()  # nothing pending: no clear to Twilio
    assert not [m for m in sent if m["event"] == "clear"]


async def test_output_clear_drops_the_rest() -> None:
    out, sent, clock = _replying(1.0)
    clock.t += 0.3
    out.clear()
    assert sent[-1] == {"event": "clear", "streamSid": SID}
    assert out.played_seconds() == pytest.approx(0.3, abs=0.02)  # frozen at the clear
    clock.t += 5
    assert out.played_seconds() == pytest.approx(0.3, abs=0.02)
    n = len(sent)
    out.write(chunk(0.2, rate=8000))  # a cancelled reply's late chunk
    assert len(sent) == n
    await asyncio.wait_for(out.drain(), WAIT)  # nothing to wait for after a clear


async def test_output_without_mark_echoes_ends_after_a_grace() -> None:
    out, sent, clock = _replying(0.4)
    clock.t += 0.4 + MARK_GRACE_S + 0.01  # past the audio's end plus the grace, no mark came back
    await asyncio.wait_for(out.drain(), WAIT)
    assert out.played_seconds() == pytest.approx(0.4, abs=0.02)


# -- the real embedded stack ----------------------------------------------------------------------------

@pytest.mark.integration
async def test_a_phone_call_with_the_embedded_models() -> None:
    """Speech through the telephone band (8 kHz μ-law) is still understood, and the spoken answer
    comes back as μ-law. Prints the caller-side latency (end of speech → first reply audio)."""
    import soxr

    from realtime.config import load_config
    from tests.realtime_util import REPO
    from tests.speech_util import piper, transcribe, wer, words

    sentence = "What is the capital of France?"
    speech = soxr.resample(piper(sentence), 16_000, 8000)
    # Greedy decoding, as the other end-to-end tests: at temperature 0.6 SmolLM2 once answered in French,
    # which the English voice and the English check of its audio cannot agree on (a flaky test, not a bug).
    config = load_config(REPO / "configs" / "default.yaml",
                         {"server.port": 0, "server.auth.enabled": False, "llm.temperature": 0.0})
    async with running_server(config) as server:
        async with twilio_call(server) as call:
            loop = asyncio.get_running_loop()
            await call.speak(np.concatenate([silence(0.5, 8000), speech]), realtime=True)
            t_end = loop.time()
            talking = asyncio.create_task(call.speak(silence(2.0, 8000), realtime=True))
            first = await call.wait_for(lambda m: m["event"] == "media", "reply audio", timeout=120)
            t_first = loop.time()
            await talking
            await wait_until(lambda: assistant_turns(server), timeout=120, what="the reply to finish")
            session = next(iter(server_context(server).sessions))
            user, reply = session.context.turns[:2]
            assert wer(sentence, user.text) <= 0.25, user.text
            audio = reply_audio(call, call.of("mark")[0]["mark"]["name"].split(".")[0])
            # The reply's audio says its text (a reply may be one word: "Paris.").
            heard = set(words(await transcribe(audio, 8000, "en", server_context(server).config.cache_path)))
            said = words(reply.text)
            assert said and sum(w in heard for w in said) >= 0.5 * len(said), (reply.text, heard)
            assert call.received.index(first) == 0
            print(f"\ntelephony: heard {user.text!r}; end of speech → first reply media "
                  f"{(t_first - t_end) * 1000:.0f} ms; reply {reply.text!r}")
