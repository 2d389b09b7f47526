"""Step-Audio-TTS-3B instruction tags: a leading chain of bracket groups such as
"(高兴1)(粤语)(慢速1)今天天气真好" or "（RAP）...". Full- and half-width brackets are accepted.

The tags stay in the text the TTS model reads (it was trained with them). What we derive here:
which system prompt / flow model to use (RAP and 哼唱 use the music model), mirroring the
reference's rule that only the FIRST group selects the instruction, and the known tag names, so
unknown ones can be reported.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

EMOTIONS = ("高兴1", "高兴2", "生气1", "生气2", "悲伤1", "撒娇1")
LANGUAGES = ("中文", "英文", "韩语", "日语", "四川话", "粤语", "广东话")
MUSIC = ("RAP", "哼唱")
SPEEDS = ("慢速1", "慢速2", "快速1", "快速2")
KNOWN = frozenset(EMOTIONS + LANGUAGES + MUSIC + SPEEDS)

_GROUP = re.compile(r"\s*[（(]([^()（）]*)[）)]")


@dataclass(frozen=True)
class TaggedText:
    text: str  # the text as given (tags included), what the TTS LLM reads
    tags: tuple[str, ...] = field(default=())  # every leading tag, in order
    body: str = ""  # the text without its leading tags
    first_group: str = ""  # the first bracket group's raw content

    @property
    def instruction(self) -> str:
        """The reference's detect_instruction_name(): the first group's content, or ""."""
        return self.first_group

    @property
    def music(self) -> str:
        """"RAP" or "哼唱" when the first tag asks for singing (uses the music flow model)."""
        return self.instruction if self.instruction in MUSIC else ""

    @property
    def unknown(self) -> tuple[str, ...]:
        return tuple(t for t in self.tags if t not in KNOWN)


def parse(text: str) -> TaggedText:
    tags: list[str] = []
    pos = 0
    first = ""
    while m := _GROUP.match(text, pos):
        first = first if pos else m.group(1).strip()
        # A group may itself list several tags: "(高兴1，粤语)" / "(高兴1 粤语)".
        tags.extend(t for t in re.split(r"[\s,，、]+", m.group(1).strip()) if t)
        pos = m.end()
    return TaggedText(text=text, tags=tuple(tags), body=text[pos:].lstrip(), first_group=first)


def with_tags(body: str, *tags: str) -> str:
    """Prefix body with half-width bracket groups, the way Step-Audio's demo builds its inputs."""
    return "".join(f"({t})" for t in tags if t) + body
