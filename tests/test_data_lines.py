"""RefinedWeb line-wise corrections (App. G.2): each rule on small hand-written documents, and the 5 % share.

Every case hides one boilerplate line among prose lines of five words each, so the document survives the
share rule and the test can compare the whole corrected text, kept and removed lines alike.
"""

from __future__ import annotations

import pytest

from lmforge.data.document import Document
from lmforge.data.stages.lines import LineCorrections, LineCorrectionsConfig, count_words


def prose(n_lines: int, start: int = 0) -> list[str]:
    """Lines of five distinct lower-case words each (no rule fires on them)."""
    return [" ".join(f"word{5 * i + j}" for j in range(5)) for i in range(start, start + n_lines)]


def correct(text: str, **options) -> tuple[str | None, str]:
    """The stage's verdict and the document's text afterwards."""
    doc = Document(text=text, id="t")
    return LineCorrections(LineCorrectionsConfig(**options))(doc), doc.text


def with_line(line: str, **options) -> str | None:
    """What becomes of ``line`` inside a 100-word document: the line as kept, or None when removed."""
    body = prose(20)
    verdict, text = correct("\n".join([*body[:10], line, *body[10:]]), **options)
    assert verdict is None
    lines = text.split("\n")
    if lines == body:
        return None
    assert lines[:10] == body[:10] and lines[11:] == body[10:]
    return lines[10]


def test_words_are_tokens_with_a_letter_or_digit():
    assert count_words("- Home") == 1
    assert count_words("| --- | --- |") == 0
    assert count_words('"Hello there" (QSSC) 3.2K émigré') == 5


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        ("ABCDE fghij", True),  # 5 upper-case characters of 11
        ("ABCDEF ghij", False),  # 6 of 11: mainly upper case
        ("SIGN UP FOR OUR NEWSLETTER", False),
        ("My CV: PDF.", False),  # 6 of 11
    ],
)
def test_mainly_upper_case(line, kept):
    assert with_line(line) == (line if kept else None)


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        ("20230704", False),
        ("12 34", True),  # a space is not a numerical character
        ("July 04, 2023", True),  # dates and timestamps: the paper has no rule for them
    ],
)
def test_only_numerical_characters(line, kept):
    # a line of digits is also one word: switch that rule off to see this one alone
    assert with_line(line, min_words_per_line=0) == (line if kept else None)


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        ("3 likes", False),
        ("1.2K shares", False),
        ("12,345 Views", False),
        ("(7 comments)", False),
        ("3 apples", True),
        ("likes 3 times", True),
    ],
)
def test_counters(line, kept):
    assert with_line(line) == (line if kept else None)


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        ("Menu", False),
        ("- Home", False),  # a bullet is not a word
        ("|---|---|", False),  # no word at all: a table rule
        ("| --- | --- |", False),
        ("* * *", False),
        ("Learn more", True),  # two words, and not one of the paper's patterns
        ("Try the demo", True),
    ],
)
def test_one_word_lines(line, kept):
    assert with_line(line) == (line if kept else None)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Sign-in to see your order", "to see your order"),  # at the start
        ("Please sign-in to see your order", "Please sign-in to see your order"),  # not at the start
        ("All about cats. Read more...", "All about cats."),  # at the end
        ("All about cats. Read more…", "All about cats."),
        ("All about cats. Read more", "All about cats. Read more"),  # not the pattern
        ("All about cats. Read more!!!", "All about cats. Read more!!!"),  # dots literal
        ("Read more... about cats here", "Read more... about cats here"),  # not at the end
        ("You have two items in cart today", "You have two today"),  # anywhere
        ("Read more...", None),  # nothing left: the line goes
    ],
)
def test_patterns_in_short_lines(line, expected):
    assert with_line(line) == expected


def test_patterns_only_in_lines_of_at_most_ten_words():
    ten = " ".join(f"w{i}" for i in range(8)) + " read more..."  # 10 words
    assert with_line(ten) == " ".join(f"w{i}" for i in range(8))
    eleven = " ".join(f"w{i}" for i in range(9)) + " read more..."
    assert with_line(eleven) == eleven


def test_pattern_lists_are_options():
    assert with_line("Learn more", suffixes=["learn more"]) is None
    assert with_line("Sign-in to see your order", prefixes=[]) == "Sign-in to see your order"


def test_blank_lines_stay():
    body = prose(20)
    verdict, text = correct("\n".join([*body[:10], "", "  ", "Menu", *body[10:]]))
    assert verdict is None
    assert text == "\n".join([*body[:10], "", "  ", *body[10:]])


@pytest.mark.parametrize(("n_upper", "expected"), [(5, None), (6, "too_many_words_removed")])
def test_document_goes_when_more_than_five_percent_of_its_words_are_removed(n_upper, expected):
    body = prose(19)  # 95 words
    shout = " ".join(f"UPPER{i}" for i in range(n_upper))  # a discarded line: 5 / 100 or 6 / 101 words
    verdict, text = correct("\n".join([shout, *body]))
    assert verdict == expected
    if expected is None:
        assert text == "\n".join(body)


def test_share_counts_the_words_an_edit_removed_not_the_whole_line():
    body = prose(18)  # 90 words
    edited = "Sign-in " + " ".join(f"w{i}" for i in range(9))  # 10 words, 1 removed: 1 / 100
    verdict, text = correct("\n".join([edited, *body]))
    assert verdict is None
    assert text.split("\n")[0] == " ".join(f"w{i}" for i in range(9))


def test_share_threshold_is_an_option():
    verdict, _ = correct("\n".join(["Menu", *prose(19)]), max_removed_words_ratio=0.0)  # 1 / 96 words
    assert verdict == "too_many_words_removed"


def test_document_without_words():
    assert correct("*** ---\n|---|")[0] == "no_words"
