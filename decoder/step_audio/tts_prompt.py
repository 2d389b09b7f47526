"""The Step-Audio-TTS-3B generation prompt, token by token, as the published model expects it.

[BOS] <|BOT|> "system\\n" + system prompt <|EOT|>
<|BOT|> "human\\n" + speaker prompt text <|EOT|> <|BOT|> "assistant\\n" + speaker prompt codes <|EOT|>
<|BOT|> "human\\n" + target text <|EOT|> <|BOT|> "assistant\\n"     -> the model continues with audio codes

The system prompt lists the instruction tags; RAP and 哼唱 (humming) use their own short prompts.
Audio codes are LLM token ids 65536 + n, printed as "<audio_n>". The strings below are the ones
the model was trained with (they are data, quoted from the model's published inference code).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from decoder.step_audio.tags import TaggedText

BOS, BOT, EOT = 1, 4, 3
AUDIO_BASE = 65536

_TAG_LIST = (
    '# 情感标签涵盖了多种情绪状态，包括但不限于：\n- "高兴1"\n- "高兴2"\n- "生气1"\n- "生气2"\n- "悲伤1"\n- "撒娇1"\n\n'
    '# 语种或方言标签包含多种语言或方言，包括但不限于：\n- "中文"\n- "英文"\n- "韩语"\n- "日语"\n- "四川话"\n- "粤语"\n- "广东话"\n\n'
    '# 音乐哼唱标签包含多种类型歌曲哼唱，包括但不限于：\n- "RAP"\n- "哼唱"\n\n'
    '# 语音调整标签，包括但不限于：\n- "慢速1"\n- "慢速2"\n- "快速1"\n- "快速2"\n\n'
)
_HEAD = "作为一名卓越的声优演员，你的任务是根据文本中（）或()括号内标注的情感、语种或方言、音乐哼唱、语音调整等标签，以丰富细腻的情感和自然顺畅的语调来朗读文本。\n"
_TAIL = "根据这些情感标签的指示，调整你的情感、语气、语调和哼唱节奏，以确保文本的情感和意义得到准确而生动的传达，如果没有()或（）括号，则根据文本语义内容自由演绎。"

SYS_PROMPT_WITHOUT_SPEAKER = _HEAD + _TAG_LIST + "请在朗读时，" + _TAIL
SYS_PROMPT_WITH_SPEAKER = _HEAD + _TAG_LIST + "请在朗读时，使用[{}]的声音，" + _TAIL
SYS_PROMPT_RAP = "请参考对话历史里的音色，用RAP方式将文本内容大声说唱出来。"
SYS_PROMPT_HUMMING = "请参考对话历史里的音色，用哼唱的方式将文本内容大声唱出来。"

Encode = Callable[[str], list[int]]  # text -> token ids, no special tokens added


def system_prompt(tagged: TaggedText, speaker_name: str) -> str:
    if tagged.music:
        return SYS_PROMPT_HUMMING if "哼唱" in tagged.text else SYS_PROMPT_RAP
    if speaker_name:
        return SYS_PROMPT_WITH_SPEAKER.format(speaker_name)
    return SYS_PROMPT_WITHOUT_SPEAKER


def _encode_after_newline(encode: Encode, text: str) -> list[int]:
    """Encode text as it tokenizes after a newline (no spurious leading-space piece)."""
    prefix = encode("\n")
    ids = encode("\n" + text)
    return ids[len(prefix):]


def build_prompt_ids(encode: Encode, tagged: TaggedText, speaker_name: str = "",
                     prompt_text: str = "", prompt_codes: Sequence[int] = ()) -> list[int]:
    """Token ids of the full generation prompt. prompt_codes are LLM ids (65536 + n).

    With no prompt text and no prompt codes the speaker turn pair is left out (a reply in the
    model's default voice; the reference always has a speaker).
    """
    human, assistant = encode("human\n"), encode("assistant\n")
    ids = [BOS, BOT] + encode("system\n" + system_prompt(tagged, speaker_name)) + [EOT]
    if prompt_text or prompt_codes:
        ids += [BOT] + human + _encode_after_newline(encode, prompt_text) + [EOT]
        ids += [BOT] + assistant + list(prompt_codes) + [EOT]
    ids += [BOT] + human + _encode_after_newline(encode, tagged.text) + [EOT]
    ids += [BOT] + assistant
    return ids


_AUDIO = re.compile(r"<audio_(\d+)>")


class AudioTokenParser:
    """Pull audio codes out of streamed text; a "<audio_12" split across pieces is kept for later."""

    def __init__(self) -> None:
        self._buf = ""

    def feed(self, piece: str) -> list[int]:
        self._buf += piece
        codes = [int(m.group(1)) for m in _AUDIO.finditer(self._buf)]
        cut = self._buf.rfind("<")
        if cut >= 0 and ">" not in self._buf[cut:]:
            self._buf = self._buf[cut:]  # an unfinished tag
        else:
            self._buf = ""
        return codes
