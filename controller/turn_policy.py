"""How long to wait at a pause before the turn counts as finished: one policy for everything the
controller knows at that moment.

- The end-of-turn model (the `turn` stage, e.g. Smart Turn) hears whether the speaker sounds
  finished: P(finished) = p, asked once per pause.
- The VAD's silence so far is what the wait is measured in (controller/turns.py).
- The transcript, when the speculative transcription is back, can only make the wait longer
  (a trailing "and", "um", a comma: more is coming) or, without a model, shorter (a question).
- The words' own P(end), p_text, asked of the chat model once the transcript is back
  (llm/turn_end.py): it lengthens the wait where the words read as a sentence with more to come,
  and overrules the audio model's doubt where they clearly end a request (text_wait_ms).

Eagerness (the Realtime API's semantic_vad) picks the threshold and the short wait: `high` takes a
finished-sounding turn sooner; `low` lets people take their time. Without a model, or with
`semantic_turn: false` (Realtime server_vad), the fixed end_of_turn_ms applies as before.

Measured trade-off (threshold vs wait vs early replies): docs/turn-taking.md.
"""
from __future__ import annotations

from controller.config import ControllerConfig

# eagerness → (threshold on p, the wait when p ≥ threshold, ms). Measured on our corpora (multi-
# sentence turns with 250–500 ms pauses after complete sentences, docs/turn-taking.md), the model
# rates those mid-turn pauses "finished" about as often as real ends, so only a wait of ~500 ms
# keeps replies from starting in them: that is `auto`. `high` trades early replies for speed.
EAGERNESS: dict[str, tuple[float, int]] = {
    "high": (0.5, 250),
    "medium": (0.5, 400),
    "auto": (0.5, 500),
    "low": (0.7, 650),
}
UNFINISHED_BELOW = 0.05  # a model this sure the speaker is mid-sentence holds the floor longer


def model_wait_ms(cfg: ControllerConfig, p: float, eagerness: tuple[float, int] | None = None) -> int:
    """The wait (ms of silence) for a pause the model scored p.

    Finished (p ≥ threshold): the eagerness's short wait. Clearly unfinished (p < 0.05, e.g.
    "my number is 0 7 …"): from the fixed wait up to the cap as p falls to 0, longer than a
    silence rule would ever hold. In between: the fixed wait, as without a model."""
    threshold, short_ms = eagerness or EAGERNESS[cfg.eagerness]
    if p >= threshold:
        return max(cfg.pause_ms + 20, min(short_ms, cfg.end_of_turn_ms))
    if p >= UNFINISHED_BELOW:
        return cfg.end_of_turn_ms
    doubt = 1.0 - p / UNFINISHED_BELOW  # 0 at the bound, 1 at p = 0
    return int(cfg.end_of_turn_ms + doubt * (cfg.max_end_of_turn_ms - cfg.end_of_turn_ms))


# p_text thresholds, chosen on our corpora with bench/turn_taking.py --text (docs/turn-taking.md,
# "Words and sound together"). Shortening the wait further where both models say "finished" was
# measured too: it added early ends (mid-turn pauses after a question) for no p50 gain, so it is not done.
TEXT_UNFINISHED = 0.02  # below: a sentence with more to come ("I am going to Paris next week." 0.004)
TEXT_SURE = 0.25  # at or above, against the audio model's doubt: the eagerness's short wait


def text_wait_ms(cfg: ControllerConfig, current_ms: int, p_audio: float | None, p_text: float,
                 sure: float = TEXT_SURE) -> int:
    """The wait once the words' P(end) is known, from the wait the audio model (and hints) set:
    longer where the words read as unfinished; the eagerness's short wait where the audio model
    doubted but the words clearly end a request ("I think I lost my card yesterday. What should
    I do first?": audio 0.04, words 0.39; it waited 1.1 s)."""
    threshold, short_ms = EAGERNESS[cfg.eagerness]
    if p_text < TEXT_UNFINISHED:
        return max(current_ms, cfg.end_of_turn_ms)
    if p_audio is not None and p_audio < threshold and p_text >= sure:
        return min(current_ms, max(short_ms, cfg.pause_ms + 20))
    return current_ms


def hinted_wait_ms(cfg: ControllerConfig, current_ms: int, transcript: str, model_spoke: bool) -> int:
    """The wait after the transcript of the pause is known. With a model's answer in force, text
    only lengthens it (Whisper ends nearly everything with a full stop, so text is weak evidence
    of an end, but a trailing conjunction is strong evidence of more)."""
    words = transcript.lower().rstrip(" .…,").split()
    last = words[-1] if words else ""
    base = cfg.end_of_turn_ms
    if last in TRAILING or transcript.rstrip().endswith(("…", "...", ",")):
        return max(current_ms, int(base * 1.6))
    if model_spoke:
        return current_ms
    if transcript.rstrip().endswith(("?", "？")):  # not ".": Whisper ends nearly everything with one
        return max(cfg.pause_ms + 100, int(base * 0.8))
    return base


TRAILING = {"and", "but", "or", "so", "because", "um", "uh", "the", "a", "to", "of", "with", "then",
            "那么", "然后", "还有", "就是", "因为", "所以", "和"}


# What a listener says to keep the speaker going, not to take the floor.
BACKCHANNELS = {"mm", "mmm", "mhm", "mm-hm", "mm-hmm", "hm", "hmm", "uh-huh", "uh", "um", "ah", "oh",
                "yeah", "yes", "yep", "ok", "okay", "right", "sure", "i see",
                "嗯", "嗯嗯", "哦", "啊", "对", "对对", "好", "是", "是的"}


# Short words that do take the floor: never mistaken for a cough.
FLOOR_WORDS = {"no", "nope", "stop", "wait", "hold", "sorry", "what", "why", "how", "who", "where", "when",
               "hey", "excuse", "pardon", "but", "actually", "cancel", "help",
               "不", "不是", "不对", "停", "等", "等等", "等一下", "什么", "为什么", "喂"}
SHORT_SOUND_MS = 700  # voiced speech shorter than this, with a word or two, may be a noise Whisper named


def is_false_interruption(transcript: str, voiced_ms: int | None = None) -> bool:
    """Speech over a reply that carried no words for the agent: nothing, only backchannels
    ("mm-hm", "嗯"), or a short sound that ASR turned into a word or two that do not take the
    floor (Whisper hears "I" in a cough and "Emma" in a piper "mm-hmm"; "No." and "Wait!" are
    always real)."""
    text = transcript.lower().strip()
    for mark in ".,!?;:…。，！？、\"'":
        text = text.replace(mark, " ")
    words = text.split()
    if not words or " ".join(words) in BACKCHANNELS or all(w in BACKCHANNELS for w in words):
        return True
    short = voiced_ms is not None and voiced_ms < SHORT_SOUND_MS and len(words) <= 2
    return short and not any(w in FLOOR_WORDS or w.rstrip("-") in FLOOR_WORDS for w in words)
