"""Gopher repetition and quality filters (Rae et al. 2021, App. A.1.1), with datatrove's semantics.

Semantics follow datatrove's ``GopherRepetitionFilter``/``GopherQualityFilter`` (the FineWeb oracle, spec
§6-7): duplicates count from their second occurrence, the character denominator is the whole text, and
punctuation tokens stay in the word list. Words are the tokens of the shared spaCy-rules tokenizer
(``data/text.py``); a "word" of the quality rules is a token with a character that is not a symbol.
n-grams are compared as word tuples (datatrove glues the words of a 5..10-gram together without a
separator, so "ab c" equals "a bc" there: a quirk not kept here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import filterfalse

import numpy as np
import regex

from lmforge.data.document import Document
from lmforge.data.stages.base import Stage
from lmforge.data.text import non_symbol_words, words

_PARA_RE = regex.compile(r"\n{2,}")
_LINE_RE = regex.compile(r"\n+")
_LETTER_RE = regex.compile(r"\p{L}")
STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


@dataclass
class GopherRepetitionConfig:
    dup_para_frac: float = 0.3
    dup_para_char_frac: float = 0.2
    dup_line_frac: float = 0.3
    dup_line_char_frac: float = 0.2
    top_n_grams: dict[int, float] = field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    dup_n_grams: dict[int, float] = field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )


def _dups(elems: list[str]) -> tuple[int, int]:
    """(number, characters) of elements that already occurred earlier in the list."""
    seen: set[str] = set()
    n = chars = 0
    for e in elems:
        if e in seen:
            n += 1
            chars += len(e)
        else:
            seen.add(e)
    return n, chars


def ngram_keys(ids: np.ndarray, n: int) -> np.ndarray:
    """A 64-bit key per run of ``n`` token ids (wrapping polynomial; collisions ~2**-64)."""
    key = np.zeros(ids.size - n + 1, dtype=np.uint64)
    for j in range(n):
        key = key * np.uint64(1_000_003) + ids[j : ids.size - n + 1 + j]
    return key


def token_arrays(toks: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (equal strings, equal ids) and token lengths as numpy arrays (no fixed-width string array,
    whose size one very long token would multiply)."""
    vocab = {t: i for i, t in enumerate(dict.fromkeys(toks))}
    ids = np.fromiter(map(vocab.__getitem__, toks), np.uint64, len(toks))
    return ids, np.fromiter(map(len, toks), np.int64, len(toks))


def repeated_chars(ids: np.ndarray, cum: np.ndarray, k: int) -> int:
    """Characters of the k-grams that repeat an earlier one; a repeat skips past itself, so overlapping
    repeats are not counted twice. Only k-grams that occur twice or more can repeat: only those are walked."""
    _, kind, counts = np.unique(ngram_keys(ids, k), return_inverse=True, return_counts=True)
    walk = np.flatnonzero(counts[kind] > 1)
    chars = cum[walk + k] - cum[walk]
    seen: set[int] = set()
    free = rep = 0  # free: the first position not inside the last repeat
    for i, key, n in zip(walk.tolist(), kind[walk].tolist(), chars.tolist()):
        if i < free:
            continue
        if key in seen:
            rep += n
            free = i + k
        else:
            seen.add(key)
    return rep


class GopherRepetition(Stage):
    name = "gopher_repetition"
    config_class = GopherRepetitionConfig

    def __call__(self, doc: Document) -> str | None:
        text, c = doc.text, self.cfg
        if not text:
            return "empty"
        size = len(text)
        paras = _PARA_RE.split(text.strip())
        n, chars = _dups(paras)
        if n / len(paras) > c.dup_para_frac:
            return "dup_para_frac"
        if chars / size > c.dup_para_char_frac:
            return "dup_para_char_frac"
        lines = _LINE_RE.split(text)
        n, chars = _dups(lines)
        if n / len(lines) > c.dup_line_frac:
            return "dup_line_frac"
        if chars / size > c.dup_line_char_frac:
            return "dup_line_char_frac"
        toks = words(text)
        if not toks:
            return None
        ids, lens = token_arrays(toks)
        cum = np.concatenate(([0], np.cumsum(lens)))
        for k, thr in sorted(c.top_n_grams.items()):
            if ids.size < k:
                continue
            _, first, counts = np.unique(ngram_keys(ids, k), return_index=True, return_counts=True)
            start = first[counts == counts.max()].min()  # ties: the n-gram seen first
            ngram_chars = int(cum[start + k] - cum[start]) + k - 1  # joined with single spaces
            if ngram_chars * int(counts.max()) / size > thr:
                return f"top_{k}_gram"
        for k, thr in sorted(c.dup_n_grams.items()):
            if ids.size < k:
                continue
            if repeated_chars(ids, cum, k) / size > thr:
                return f"dup_{k}_gram_frac"
        return None


@dataclass
class GopherQualityConfig:
    min_doc_words: int = 50
    max_doc_words: int = 100_000
    min_avg_word_length: float = 3.0
    max_avg_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1  # for "#" and for ellipses, each
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8
    min_stop_words: int = 2
    stop_words_distinct: bool = (
        True  # distinct stop words (paper, datatrove HEAD) or occurrences (FineWeb era)
    )


class GopherQuality(Stage):
    name = "gopher_quality"
    config_class = GopherQualityConfig

    def __init__(self, cfg: GopherQualityConfig):
        super().__init__(cfg)
        self.stop_words = frozenset(STOP_WORDS)

    def __call__(self, doc: Document) -> str | None:
        text, c = doc.text, self.cfg
        toks = words(text)
        real = non_symbol_words(toks)
        if len(real) < c.min_doc_words:
            return "short_doc"
        if len(real) > c.max_doc_words:
            return "long_doc"
        avg = sum(map(len, real)) / len(real)
        if avg < c.min_avg_word_length:
            return "below_avg_word_length"
        if avg > c.max_avg_word_length:
            return "above_avg_word_length"
        if text.count("#") / len(toks) > c.max_symbol_word_ratio:
            return "too_many_hashes"
        if (text.count("...") + text.count("…")) / len(toks) > c.max_symbol_word_ratio:
            return "too_many_ellipsis"
        lines = text.splitlines() or [""]
        if sum(ln.lstrip().startswith(("•", "-")) for ln in lines) / len(lines) > c.max_bullet_lines_ratio:
            return "too_many_bullets"
        if sum(ln.rstrip().endswith(("...", "…")) for ln in lines) / len(lines) > c.max_ellipsis_lines_ratio:
            return "too_many_end_ellipsis"
        if _with_letter(toks) / len(toks) < c.min_alpha_words_ratio:
            return "below_alpha_ratio"
        if c.stop_words_distinct:
            n_stop = len(self.stop_words.intersection(toks))
        else:
            n_stop = sum(map(self.stop_words.__contains__, toks))
        if n_stop < c.min_stop_words:
            return "few_stop_words"
        return None


def _with_letter(toks: tuple[str, ...]) -> int:
    """How many tokens contain a letter (the all-letter ones are counted without a regex)."""
    return len(toks) - len(list(filterfalse(_LETTER_RE.search, filterfalse(str.isalpha, toks))))
