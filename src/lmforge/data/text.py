"""Text helpers shared by several stages: one word tokenizer (cached per text) and MinHash normalisation.

Tokenising once per document and sharing the tokens between the repetition, quality and FineWeb filters is
the single biggest saving over running each filter on its own (spec §16, speed notes).
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

import regex

# Words (letters/digits, with inner apostrophes or hyphens) and single punctuation/symbol characters, the way
# a rule-based word tokenizer (spaCy blank "en") splits web text, without its model-free but slow machinery.
_TOKEN_RE = regex.compile(r"\w+(?:['’\-]\w+)*|[^\w\s]")
_PUNCT_RE = regex.compile(r"[\p{P}\p{S}]+")
_DIGITS_RE = regex.compile(r"\d+")
_MARKS_RE = regex.compile(r"\p{Mn}+")


@lru_cache(maxsize=8)
def words(text: str) -> tuple[str, ...]:
    """Word and punctuation tokens of ``text``; cached because consecutive filters ask for the same text."""
    return tuple(_TOKEN_RE.findall(text))


def is_word(token: str) -> bool:
    """A token with a letter or digit in it, as opposed to a punctuation/symbol token."""
    return len(token) > 1 or token.isalnum() or token == "_"  # symbol tokens are single characters


def normalize_for_dedup(text: str) -> str:
    """Lower-case, punctuation to spaces, digits to 0, accents removed, whitespace collapsed (spec §10).

    Punctuation becomes a space (datatrove HEAD) rather than being deleted (FineWeb era), so "a-b" stays two
    words.
    """
    text = _DIGITS_RE.sub("0", _PUNCT_RE.sub(" ", text.lower()))
    text = _MARKS_RE.sub("", unicodedata.normalize("NFD", text))
    return " ".join(text.split())
