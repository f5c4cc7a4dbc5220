"""RefinedWeb line-wise corrections (App. G.2) with DCLM's public parameterisation (spec §8).

Each line is dropped if it is mostly upper case, only digits, a counter ("3 likes") or a single word; short
lines (<= 10 words) lose boilerplate phrases. If the words removed are more than 5 % of the document's
words, the whole document goes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import regex

from lmforge.data.document import Document
from lmforge.data.stages.base import Stage

_COUNTER_RE = regex.compile(
    r"^\W*\d(?:,|\.|\d)*(?:k|m|b)?\s+(?:likes|shares|comments|retweets|reposts|quotes|bookmarks|upvotes|"
    r"downvotes|downloads|views|followers)\W*$"
)


@dataclass
class LineCorrectionsConfig:
    max_uppercase_ratio: float = 0.5  # upper-case characters / all characters of the line
    min_words_per_line: int = 2
    short_line_words: int = 10  # phrase removal applies to lines of at most this many words
    anywhere: list[str] = field(default_factory=lambda: ["items in cart"])
    prefixes: list[str] = field(default_factory=lambda: ["sign-in"])
    suffixes: list[str] = field(default_factory=lambda: ["read more...", "read more…", "read more"])
    max_removed_words_ratio: float = 0.05


def _count_words(text: str) -> int:
    """Words that start with a letter or digit (punctuation-only tokens do not count)."""
    return sum(1 for w in text.split() if w[0].isalnum())


class LineCorrections(Stage):
    name = "line_corrections"
    config_class = LineCorrectionsConfig

    def __init__(self, cfg: LineCorrectionsConfig):
        super().__init__(cfg)
        alt = lambda ps: "|".join(map(regex.escape, sorted(ps, key=len, reverse=True)))  # noqa: E731
        self.anywhere = regex.compile(rf"\s?(?:{alt(cfg.anywhere)})", regex.I) if cfg.anywhere else None
        self.prefix = regex.compile(rf"^(?:{alt(cfg.prefixes)})\s?", regex.I) if cfg.prefixes else None
        self.suffix = regex.compile(rf"\s?(?:{alt(cfg.suffixes)})$", regex.I) if cfg.suffixes else None

    def fix_line(self, line: str) -> str | None:
        """The line after edits, or None when dropped. Empty lines stay (they separate paragraphs)."""
        if not line.strip():
            return line
        c = self.cfg
        if sum(ch.isupper() for ch in line) / len(line) > c.max_uppercase_ratio:
            return None
        if line.isdigit() or _COUNTER_RE.match(line.lower()):
            return None
        n_words = len(line.split())
        if n_words < c.min_words_per_line:
            return None
        if n_words <= c.short_line_words:
            for pattern in (self.anywhere, self.prefix, self.suffix):
                if pattern is not None:
                    line = pattern.sub("", line)
            if not line.strip():
                return None
        return line

    def __call__(self, doc: Document) -> str | None:
        before = _count_words(doc.text)
        if before == 0:
            return "no_words"
        kept = [fixed for line in doc.text.split("\n") if (fixed := self.fix_line(line)) is not None]
        text = "\n".join(kept).strip()
        if (before - _count_words(text)) / before > self.cfg.max_removed_words_ratio:
            return "too_many_words_removed"
        doc.text = text
        return None
