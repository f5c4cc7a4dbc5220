"""RefinedWeb line-wise corrections (Penedo et al. 2023, §3.2 and App. G.2; spec §8).

The paper's rules, line by line: discard a line that is mainly upper case, only digits, a counter ("3 likes")
or one word; in a line of <= 10 words remove a pattern at its start ("sign-in"), at its end ("Read more...")
or anywhere ("items in cart"). If the corrections removed more than 5 % of the document's words, the whole
document goes. Nothing more: the paper has no rule for dates, tables or other calls to action.

The paper gives no thresholds and only those three patterns as examples. Filled in here:

- "mainly upper case": upper-case characters > 0.5 of all the line's characters (DCLM's value);
- a counter: DCLM's regex (a number, optional K/M/B, then likes, shares, ..., followers);
- a word, for all three rules that count words: a whitespace-separated token with a letter or digit, so
  "- Home" is one word and "| --- |" none (DCLM's line rules count whitespace tokens: 2 and 3);
- "one word" is read as "at most one": a line with no word at all ("|---|---|", "***") goes too, as in DCLM;
- the patterns are the paper's examples, matched literally and case-insensitively, with "…" as another
  spelling of "..."; the paper's full lists are unpublished, so add your own through the options;
- the share counts the words the corrections removed (§3.2: "remove more than 5% of a document"); App. G.2
  says "the words in the flagged lines", which differs only for an edited line (whole line vs pattern);
- blank lines stay (paragraph breaks); a document without words has no share and goes as ``no_words``.
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
    min_words_per_line: int = 2  # fewer words: the line "only contains one word" (or none)
    short_line_words: int = 10  # patterns are removed from lines of at most this many words
    anywhere: list[str] = field(default_factory=lambda: ["items in cart"])
    prefixes: list[str] = field(default_factory=lambda: ["sign-in"])
    suffixes: list[str] = field(default_factory=lambda: ["read more...", "read more…"])
    max_removed_words_ratio: float = 0.05


def count_words(text: str) -> int:
    """Tokens with a letter or digit: bullets, pipes and table rules are layout, not words."""
    return sum(any(map(str.isalnum, token)) for token in text.split())


def _alternation(patterns: list[str]) -> str:
    """Literal patterns, longest first so a longer one wins over its prefix."""
    return "|".join(map(regex.escape, sorted(patterns, key=len, reverse=True)))


class LineCorrections(Stage):
    name = "line_corrections"
    config_class = LineCorrectionsConfig

    def __init__(self, cfg: LineCorrectionsConfig):
        super().__init__(cfg)
        self.patterns = [
            regex.compile(template.format(_alternation(ps)), regex.I)
            for template, ps in (
                (r"\s?(?:{})", cfg.anywhere),
                (r"^(?:{})\s?", cfg.prefixes),
                (r"\s?(?:{})$", cfg.suffixes),
            )
            if ps
        ]

    def discard(self, line: str, n_words: int) -> bool:
        """The paper's four discard rules; ``line`` is not blank."""
        c = self.cfg
        return (
            sum(ch.isupper() for ch in line) / len(line) > c.max_uppercase_ratio
            or line.isdigit()
            or _COUNTER_RE.match(line.lower()) is not None
            or n_words < c.min_words_per_line
        )

    def fix_line(self, line: str) -> str | None:
        """The line after edits, or None when dropped. Blank lines stay (they separate paragraphs)."""
        if not line.strip():
            return line
        n_words = count_words(line)
        if self.discard(line, n_words):
            return None
        if n_words <= self.cfg.short_line_words:
            for pattern in self.patterns:
                line = pattern.sub("", line)
        return line if line.strip() else None

    def __call__(self, doc: Document) -> str | None:
        before = count_words(doc.text)
        if before == 0:
            return "no_words"
        kept = [fixed for line in doc.text.split("\n") if (fixed := self.fix_line(line)) is not None]
        text = "\n".join(kept).strip()
        if (before - count_words(text)) / before > self.cfg.max_removed_words_ratio:
            return "too_many_words_removed"
        doc.text = text
        return None
