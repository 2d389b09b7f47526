"""espeak-ng as a decoder, through its command line (Debian package `espeak-ng`).

Formant synthesis: robotic, but it speaks ~100 languages and runs far faster than real time, so
it is the fallback for what the neural voice cannot say (Mandarin, Japanese, Korean) and a
no-model decoder of its own (impl "espeak"). Each clause is one `espeak-ng --stdout` process; its
WAV is read as it is written and the process is killed when the reply is cancelled.
"""
from __future__ import annotations

import asyncio
import shutil
import struct
from collections.abc import AsyncIterator
from contextlib import aclosing

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from decoder.audio_chunks import aclose_quietly, chunked, script_language
from decoder.base import AudioChunk
from decoder.clauses import clauses

ESPEAK_RATE = 22_050  # espeak-ng's output rate for every voice


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    language: str = Field("en", description="language of text in no CJK script (a key of voices)")
    voices: dict[str, str] = Field(
        # zh: Debian's espeak-ng 1.51 `cmn` voice turns Han characters into pinyin and reads that
        # as English ("jin1" → "dʒɪn wʌn"); `cmn-latn-pinyin` reads the same characters in Mandarin.
        default_factory=lambda: {"en": "en-us", "zh": "cmn-latn-pinyin", "ja": "ja", "ko": "ko"},
        description="language -> espeak-ng voice name (`espeak-ng --voices` lists them)")
    speed_wpm: int = Field(175, ge=80, le=450, description="words per minute")
    pitch: int = Field(50, ge=0, le=99)
    chunk_ms: int = Field(200, ge=20, le=2000)
    executable: str = "espeak-ng"


class EspeakError(RuntimeError):
    pass


def _parse_wav_header(header: bytes) -> tuple[int, int]:
    """(sample rate, header length) of espeak-ng's streamed WAV (its sizes are placeholders)."""
    if header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        raise EspeakError("espeak-ng wrote no WAV header")
    pos = 12
    rate = 0
    while pos + 8 <= len(header):
        tag, size = header[pos:pos + 4], struct.unpack("<I", header[pos + 4:pos + 8])[0]
        if tag == b"fmt ":
            channels, rate, _, _, bits = struct.unpack("<HIIHH", header[pos + 10:pos + 24])
            if channels != 1 or bits != 16:
                raise EspeakError(f"unexpected espeak-ng format: {channels} ch, {bits} bit")
        elif tag == b"data":
            return rate, pos + 8
        pos += 8 + size
    raise EspeakError("espeak-ng WAV header has no data chunk")


class EspeakDecoder:
    """Shared per server; every synthesize()/pcm() call runs its own espeak-ng processes."""

    sample_rate = ESPEAK_RATE

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or Options()
        exe = shutil.which(self.options.executable)
        if exe is None:
            raise EspeakError(f"{self.options.executable} not found: install it (apt-get install -y espeak-ng)")
        self.executable = exe
        self.processes_started = 0  # for tests: every process must be gone after a cancel
        self._live: set[asyncio.subprocess.Process] = set()

    def voice_for(self, text: str) -> str:
        lang = script_language(text) or self.options.language
        return self.options.voices.get(lang) or self.options.voices.get(self.options.language, "en-us")

    async def pcm(self, text: str, voice: str | None = None) -> AsyncIterator[np.ndarray]:
        """int16 audio of one clause at sample_rate, as espeak-ng writes it."""
        args = [self.executable, "-b", "1", "-v", voice or self.voice_for(text), "-s", str(self.options.speed_wpm),
                "-p", str(self.options.pitch), "--stdout", "--stdin"]  # text on stdin: no option injection
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        self.processes_started += 1
        self._live.add(proc)
        try:
            assert proc.stdin and proc.stdout and proc.stderr
            proc.stdin.write(text.encode("utf-8"))
            proc.stdin.close()
            try:
                header = await proc.stdout.readexactly(44)
            except asyncio.IncompleteReadError:
                err = (await proc.stderr.read()).decode(errors="replace").strip()
                await proc.wait()
                raise EspeakError(f"espeak-ng failed (voice {args[4]!r}, exit {proc.returncode}): {err}") from None
            rate, data_at = _parse_wav_header(header)
            if rate != self.sample_rate:
                raise EspeakError(f"espeak-ng wrote {rate} Hz, expected {self.sample_rate}")
            rest = header[data_at:]
            step = int(self.options.chunk_ms / 1000 * rate) * 2
            while True:
                data = rest + await proc.stdout.read(step)
                if len(data) == len(rest):
                    break
                usable = len(data) - len(data) % 2
                rest = data[usable:]
                if usable:
                    yield np.frombuffer(data[:usable], dtype="<i2").astype(np.int16)
            await proc.wait()
        finally:
            self._live.discard(proc)
            if proc.returncode is None:  # cancelled mid-clause: don't leave it running
                proc.kill()
                await proc.wait()

    @property
    def live_processes(self) -> int:
        return len(self._live)

    async def synthesize(self, text: AsyncIterator[str]) -> AsyncIterator[AudioChunk]:
        chunk_s = self.options.chunk_ms / 1000
        try:
            async with aclosing(clauses(text)) as cut:
                async for clause in cut:
                    label = clause
                    async with aclosing(self.pcm(clause)) as pcms:  # kills espeak-ng if cancelled
                        async for pcm in pcms:
                            for chunk in chunked(pcm, self.sample_rate, chunk_s, label):
                                yield chunk
                                label = ""
        finally:
            await aclose_quietly(text)


def build(options: dict, env) -> EspeakDecoder:
    from core.config import validate_options

    return EspeakDecoder(validate_options(Options, "decoder", options))
