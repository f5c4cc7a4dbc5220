"""C4's line and page rules (Raffel et al. 2020 §2.2), with datatrove's defaults (5 sentences, 3 words).

The filter rewrites the text to the lines it keeps. FineWeb runs it with ``filter_no_terminal_punct: false``.
Sentences are counted the way datatrove counts them (spaCy's sentencizer on the line's tokens), so the
period of "Mr." or "Jan." (one token each) ends no sentence, and "।" or "。" do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import regex

from lmforge.data.document import Document
from lmforge.data.stages.base import Stage
from lmforge.data.text import count_sentences

_CITATION_RE = regex.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
_END_PUNCT = (".", "?", "!", '"', "'")
POLICY_PHRASES = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)


@dataclass
class C4Config:
    remove_citations: bool = True
    filter_no_terminal_punct: bool = True
    min_num_sentences: int = 5
    min_words_per_line: int = 3
    max_word_length: int = 1000
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True
    policy_phrases: list[str] = field(default_factory=lambda: list(POLICY_PHRASES))


class C4Quality(Stage):
    name = "c4"
    config_class = C4Config

    def __call__(self, doc: Document) -> str | None:
        c = self.cfg
        kept: list[str] = []
        sentences = 0
        for raw in doc.text.splitlines():
            line = raw.strip()
            n_words = line.split()
            if not n_words or max(map(len, n_words)) > c.max_word_length:
                continue
            if c.remove_citations:
                line = _CITATION_RE.sub("", line)
            if c.filter_no_terminal_punct and (not line.endswith(_END_PUNCT) or line.endswith("...")):
                continue
            if len(n_words) < c.min_words_per_line:
                continue
            lower = line.lower()
            if c.filter_lorem_ipsum and "lorem ipsum" in lower:
                return "lorem_ipsum"
            if c.filter_javascript and "javascript" in lower:
                continue
            if c.filter_curly_bracket and "{" in line:
                return "curly_bracket"
            if c.filter_policy and any(p in lower for p in c.policy_phrases):
                continue
            if sentences < c.min_num_sentences:  # only the minimum matters: stop counting there
                sentences += count_sentences(line)
            kept.append(line)
        if sentences < c.min_num_sentences:
            return "too_few_sentences"
        doc.text = "\n".join(kept).strip()
        return None
