"""Incremental detokenisation: a growing token sequence as text deltas, in time linear in its length.

Re-decoding a whole row at every step is quadratic, and decoding each token on its own is wrong twice:
a byte-level BPE token may end inside a multi-byte UTF-8 character (decoded alone it gives U+FFFD), and
some decoders change a token's text by what precedes it (SentencePiece drops the leading space of the
first token). So, as TGI and vLLM do, each step decodes only a short window of the latest tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

from lmforge.tokenizer.core import Tokenizer

CONTEXT = 5  # prompt tokens decoded before the first new one, so it decodes as it does mid-text


class IncrementalDetokenizer:
    """Text deltas of a growing token sequence that never end inside a character.

    ``ids`` is a short window: the tokens whose text was emitted last (their text ``prefix_text``,
    decoded as the window's start) and any not emitted yet. A step decodes the window and emits what
    extends beyond ``prefix_text``, unless the text ends in U+FFFD: an unfinished character waits for
    its next bytes (or ``flush``). The window then restarts at the tokens just emitted.
    """

    def __init__(self, tokenizer: Tokenizer, context: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.ids = list(context)
        self.prefix_text = tokenizer.decode(self.ids)
        self.read = len(self.ids)  # ids[read:] are not emitted yet

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if len(text) <= len(self.prefix_text) or text.endswith("\ufffd"):
            return ""
        delta = text[len(self.prefix_text) :]
        del self.ids[: self.read]
        self.read = len(self.ids)
        self.prefix_text = self.tokenizer.decode(self.ids)
        return delta

    def flush(self) -> str:
        """What is still held back (an unfinished character, as U+FFFD), once the sequence has ended."""
        delta = self.tokenizer.decode(self.ids)[len(self.prefix_text) :]
        self.read = len(self.ids)
        self.prefix_text += delta
        return delta


class TextTracker:
    """A request's output text: detokenised deltas, ended by the first stop string (left out).

    A tail that may still grow into a stop string is held back, so no emitted text is ever retracted;
    only that tail and the new delta are searched, which keeps the cost linear.
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = (), context: Sequence[int] = ()):
        self.detok = IncrementalDetokenizer(tokenizer, context)
        self.stop = list(stop)
        self.held = ""
        self.stopped = False  # a stop string was found: the text is complete

    def add(self, token: int) -> str:
        return self._release(self.detok.add(token))

    def flush(self) -> str:
        """The rest of the text, once the sequence has ended (eos, max_tokens)."""
        out = self._release(self.detok.flush())
        if not self.stopped:
            out, self.held = out + self.held, ""
        return out

    def _release(self, delta: str) -> str:
        if self.stopped or not delta:
            return ""
        window = self.held + delta
        cut = min((i for i in (window.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped, self.held = True, ""
            return window[:cut]
        hold = max(
            (k for s in self.stop for k in range(1, min(len(s), len(window) + 1)) if window.endswith(s[:k])),
            default=0,
        )
        self.held = window[len(window) - hold :]
        return window[: len(window) - hold]
