"""A reply's text on its way to the decoder, in whole sentences: what is spoken ends at a sentence end.

Two things end a reply before the model would:
- the server's token limit (max_tokens) cuts the text mid-sentence ("…and you should also
  consider the"): that unfinished sentence is not spoken;
- `max_sentences`: a small model asked for "one or two short sentences" often writes five, or
  a list, until max_tokens (SmolLM2-135M: 1–7 sentences, a fifth of replies cut at 120 tokens,
  docs/benchmarks.md). The reply ends after that many; the LLM stream is closed, so the server
  stops generating and neither it nor the TTS spends CPU on text no one asked for.

The first sentence passes on as it comes: the decoder sends its first words to TTS before any
punctuation (first_clause_words), and holding them would delay every reply. From then on text is
passed on a sentence at a time, which costs nothing: the decoder cuts later clauses only at
sentence ends anyway, and the first sentence is playing meanwhile. A sentence running past
`hold_chars` with no end in sight passes on as it comes, as the decoder would cut it there too.
"""
from __future__ import annotations

from decoder.clauses import sentence_end


class SentenceGate:
    def __init__(self, max_sentences: int | None = None, hold_chars: int = 160) -> None:
        self.max_sentences = max_sentences
        self.hold_chars = hold_chars
        self.sentences = 0  # complete sentences passed on
        self.full = False  # max_sentences reached: the reply ends here
        self.dropped = ""  # the unfinished sentence not spoken (after finish(cut=True))
        self._tail = ""  # text since the last sentence end
        self._passed = 0  # how much of _tail was already passed on

    def feed(self, piece: str) -> str:
        """The text to pass on now, given the next piece (nothing once full)."""
        if self.full:
            return ""
        self._tail += piece
        out = ""
        while (end := sentence_end(self._tail)) >= 0:
            out += self._tail[self._passed:end]
            self._tail, self._passed = self._tail[end:], 0
            self.sentences += 1
            if self.max_sentences is not None and self.sentences >= self.max_sentences:
                self.full = True
                self._tail = ""
                return out
        if self.sentences == 0 or len(self._tail) > self.hold_chars:
            out += self._tail[self._passed:]
            self._passed = len(self._tail)
        return out

    def finish(self, cut: bool) -> str:
        """The rest, at the end of the stream; `cut`: the server stopped it at max_tokens, so an
        unfinished last sentence is dropped (one ending in punctuation is whole, and kept)."""
        rest, self._tail, self._passed = self._tail[self._passed:], "", 0
        # Nothing complete is left in `rest` but maybe its last sentence, ending at the very end.
        if cut and sentence_end(rest.rstrip() + " ") < 0:
            self.dropped = rest
            return ""
        return rest
