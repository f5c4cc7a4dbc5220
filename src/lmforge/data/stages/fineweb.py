"""FineWeb's own three filters plus datatrove's list-ratio check (spec §9), with the code's thresholds.

The character-duplication threshold is 0.01, what datatrove's code uses and what produced the FineWeb
release (the paper's prose says 0.1). A line "ends with punctuation" when its last character, trailing
spaces included, is a sentence terminal ("." "!" "?" "。" "।" ...; not "…"), as in datatrove.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.data.document import Document
from lmforge.data.stages.base import Stage
from lmforge.data.stages.gopher import _dups
from lmforge.data.text import SENTENCE_TERMINALS, words


@dataclass
class FineWebConfig:
    line_punct_thr: float = 0.12  # drop when fewer lines than this end in terminal punctuation
    short_line_length: int = 30
    short_line_thr: float = 0.67  # drop when more lines than this are <= short_line_length characters
    char_duplicates_ratio: float = 0.01
    new_line_ratio: float = 0.3  # list-like pages: newlines per word
    use_list_ratio: bool = True


class FineWebQuality(Stage):
    name = "fineweb"
    config_class = FineWebConfig

    def __call__(self, doc: Document) -> str | None:
        c, text = self.cfg, doc.text
        lines = [ln for ln in text.split("\n") if ln.strip()]
        if not lines:
            return "empty"
        if sum(ln[-1] in SENTENCE_TERMINALS for ln in lines) / len(lines) < c.line_punct_thr:
            return "line_punct_ratio"
        if sum(len(ln) <= c.short_line_length for ln in lines) / len(lines) > c.short_line_thr:
            return "short_line_ratio"
        if _dups(lines)[1] / max(len(text) - text.count("\n"), 1) > c.char_duplicates_ratio:
            return "char_dup_ratio"
        if c.use_list_ratio and text.count("\n") / max(len(words(text)), 1) > c.new_line_ratio:
            return "list_ratio"
        return None
