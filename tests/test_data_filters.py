"""Per-document stages: keep/drop on both sides of every threshold, on crafted text.

Each case isolates one rule (the others are switched off through the stage's settings) and builds two texts
whose measured ratio sits just under and just over the threshold; the ratio is computed here by hand, so a
wrong comparison, denominator or default fails the test.
"""

from __future__ import annotations

import pytest

from lmforge.data.document import Document
from lmforge.data.stages.c4 import C4Config, C4Quality
from lmforge.data.stages.extract import Extract, ExtractConfig
from lmforge.data.stages.fineweb import FineWebConfig, FineWebQuality
from lmforge.data.stages.gopher import (
    GopherQuality,
    GopherQualityConfig,
    GopherRepetition,
    GopherRepetitionConfig,
)
from lmforge.data.stages.language import Language, LanguageConfig
from lmforge.data.stages.lines import LineCorrections, LineCorrectionsConfig
from lmforge.data.stages.pii import Pii, PiiConfig
from lmforge.data.stages.url import UrlFilter, UrlFilterConfig
from lmforge.data.text import SENTENCE_TERMINALS, count_sentences, non_symbol_words, tokens, words


def verdict(stage, text: str, url: str = "") -> str | None:
    return stage(Document(text=text, id="t", url=url))


def filler(n: int, start: int = 0) -> list[str]:
    """``n`` distinct 4-letter alphabetic words (no stop words, no repeats)."""
    letters = "bcdfghjklmnpqrstvwxz"
    return [
        letters[(i // 400) % 20] + letters[(i // 20) % 20] + letters[i % 20] + "o"
        for i in range(start, start + n)
    ]


# ---------------------------------------------------------------- word tokens and sentences
# Expected values are what spaCy's blank English tokenizer and sentencizer give (datatrove's word tokenizer
# for English), written out so that the tests need neither.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("U.S.", ["U.S."]),
        ("449,000", ["449,000"]),
        ("3.8", ["3.8"]),
        ("https://www.example.com/a-b/c?d=1.", ["https://www.example.com/a-b/c?d=1", "."]),
        ("Gov.", ["Gov."]),
        ("Jan.", ["Jan."]),
        ("it's", ["it", "'s"]),
        ("Smith’s", ["Smith", "’s"]),
        ("don't", ["do", "n't"]),
        ("can’t", ["ca", "n’t"]),
        ("dont", ["do", "nt"]),
        ("its", ["its"]),
        ("well-known", ["well", "-", "known"]),
        ("2020-21", ["2020", "-", "21"]),
        ("NATO.", ["NATO", "."]),
        ("A.", ["A."]),
        ("z.B.", ["z.", "B."]),
        ("10am", ["10", "am"]),
        ("5km", ["5", "km"]),
        ("e.g.,", ["e.g.", ","]),
        ("end...", ["end", "..."]),
        (":)", [":)"]),
        ("cannot", ["can", "not"]),
        ("http://8.8.8.8/a-b", ["http://8.8.8.8/a-b"]),  # a public IPv4 host: a URL
        ("http://192.168.1.1/a-b", ["http://192.168.1.1", "/", "a", "-", "b"]),  # a private one: not
        ("5سم", ["5", "سم"]),  # a unit after a number
        ("কুষ্টিয়া-১", ["কুষ্টিয়া-১"]),  # deliberate: "১" is a digit, not a letter (spaCy: 3 tokens)
    ],
)
def test_tokens_follow_spacy_english_rules(text, expected):
    assert list(tokens(text)) == expected


def test_tokens_of_a_sentence():
    text = 'Gov. Smith said (Reuters) the U.S. economy grew 3.8% to $449,000, "not bad."\n\n  Next\tline'
    assert list(words(text)) == [
        *["Gov.", "Smith", "said", "(", "Reuters", ")", "the", "U.S.", "economy", "grew", "3.8", "%"],
        *["to", "$", "449,000", ",", '"', "not", "bad", ".", '"', "Next", "line"],
    ]


@pytest.mark.parametrize(
    ("line", "n"),
    [
        ("Mr. Smith met Dr. Jones on Jan. 5 in Washington.", 1),
        ("Prices rose 3.8 percent in the U.S. last year. Analysts expected more.", 2),
        ('"Stop." He left!', 2),  # the closing quote stays with its sentence
        ("Wait... what?! Yes.", 2),  # "..." is no sentence end, "?" "!" are
        ("यह पहला वाक्य है। यह दूसरा वाक्य है।", 2),
        ("One. Two. Three.", 3),
        ('He said "Go."  )', 2),  # two spaces are a token for spaCy, and not punctuation
        ('He said "Go." )', 1),
    ],
)
def test_sentences_as_spacy_sentencizer(line, n):
    assert count_sentences(line) == n


# ---------------------------------------------------------------- Gopher repetition

NO_REP = dict(
    dup_para_frac=1.0,
    dup_para_char_frac=1.0,
    dup_line_frac=1.0,
    dup_line_char_frac=1.0,
    top_n_grams={},
    dup_n_grams={},
)


def rep(**kw) -> GopherRepetition:
    return GopherRepetition(GopherRepetitionConfig(**{**NO_REP, **kw}))


def test_repetition_defaults_are_gopher_table_a1():
    c = GopherRepetitionConfig()
    assert (c.dup_line_frac, c.dup_para_frac, c.dup_line_char_frac, c.dup_para_char_frac) == (
        0.3,
        0.3,
        0.2,
        0.2,
    )
    assert c.top_n_grams == {2: 0.20, 3: 0.18, 4: 0.16}
    assert c.dup_n_grams == {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}


def test_dup_line_fraction_threshold():
    lines = [" ".join(filler(3, 3 * i)) for i in range(7)]
    keep = "\n".join(lines + [lines[0]] * 3)  # 3 of 10 lines repeat: 0.30, not > 0.30
    drop = "\n".join(lines + [lines[0]] * 4)  # 4 of 11: 0.36
    assert verdict(rep(dup_line_frac=0.3), keep) is None
    assert verdict(rep(dup_line_frac=0.3), drop) == "dup_line_frac"


def test_dup_para_fraction_threshold():
    paras = [" ".join(filler(3, 3 * i)) for i in range(7)]
    assert verdict(rep(dup_para_frac=0.3), "\n\n".join(paras + [paras[1]] * 3)) is None
    assert verdict(rep(dup_para_frac=0.3), "\n\n".join(paras + [paras[1]] * 4)) == "dup_para_frac"


@pytest.mark.parametrize(("d", "expected"), [(34, None), (35, "dup_line_char_frac")])
def test_dup_line_char_fraction_threshold(d, expected):
    a, dup = "a" * 100, "b" * d
    text = f"{a}\n{dup}\n{dup}"  # duplicated characters d / (100 + 2d + 2): 34 -> 0.2000, 35 -> 0.2035
    assert verdict(rep(dup_line_char_frac=0.2), text) == expected


@pytest.mark.parametrize(("d", "expected"), [(34, None), (35, "dup_para_char_frac")])
def test_dup_para_char_fraction_threshold(d, expected):
    a, dup = "a" * 98, "b" * d
    text = f"{a}\n\n{dup}\n\n{dup}"  # d / (98 + 2d + 4): 34 -> 0.2000, 35 -> 0.2035
    assert verdict(rep(dup_para_char_frac=0.2), text) == expected


@pytest.mark.parametrize(("m", "expected"), [(79, None), (78, "top_2_gram")])
def test_top_2_gram_threshold(m, expected):
    # "alpha beta" x10: top 2-gram score 10 chars * 10 / len; len = 11*10 + 5*m - 1 -> 79: 0.198, 78: 0.2004
    text = "alpha beta " * 10 + " ".join(filler(m))
    assert verdict(rep(top_n_grams={2: 0.2}), text) == expected


@pytest.mark.parametrize(("pad", "expected"), [(134, None), (133, "dup_5_gram_frac")])
def test_duplicate_5_gram_threshold(pad, expected):
    gram = "aaaa bbbb cccc dddd eeee"  # 20 characters once the words are joined without spaces
    body = " ".join(filler(2)) + " " + gram + " " + " ".join(filler(2, 2)) + " " + gram + " "
    text = body + "z" * (pad - len(body))  # repeated chars 20 / len: 134 -> 0.149, 133 -> 0.1504
    assert len(text) == pad
    assert verdict(rep(dup_n_grams={5: 0.15}), text) == expected


def test_links_are_one_token_each():
    # 18 short links under a paragraph: cut into "https" ":" "/" "/" "example" "." ..., they would repeat
    # 5-grams on every line
    links = [f"https://example.com/news/{w}" for w in filler(18)]
    text = " ".join(filler(60)) + ".\n" + "\n".join(links)
    assert verdict(GopherRepetition(GopherRepetitionConfig()), text) is None


def test_ngrams_compare_words_not_glued_strings():
    # deliberate: datatrove glues a 5-gram's words ("ab c d e f" and "a bc d e f" are both "abcdef") and
    # would count 6 repeated characters here (6 / 26 > 0.15); lmforge compares the words
    assert verdict(rep(dup_n_grams={5: 0.15}), "ab c d e f kkkk a bc d e f") is None
    assert verdict(rep(dup_n_grams={5: 0.15}), "ab c d e f kkkk ab c d e f") == "dup_5_gram_frac"


# ---------------------------------------------------------------- Gopher quality

NO_QUALITY = dict(min_doc_words=0, min_stop_words=0, min_alpha_words_ratio=0.0)


def quality(**kw) -> GopherQuality:
    return GopherQuality(GopherQualityConfig(**{**NO_QUALITY, **kw}))


def test_quality_defaults_are_gopher():
    c = GopherQualityConfig()
    assert (c.min_doc_words, c.max_doc_words, c.min_avg_word_length, c.max_avg_word_length) == (
        50,
        100_000,
        3,
        10,
    )
    assert (c.max_symbol_word_ratio, c.max_bullet_lines_ratio, c.max_ellipsis_lines_ratio) == (0.1, 0.9, 0.3)
    assert (c.min_alpha_words_ratio, c.min_stop_words) == (0.8, 2)


def test_word_count_bounds():
    text = lambda n: " ".join(["the", "and", *filler(n - 2)])  # noqa: E731
    g = GopherQuality(GopherQualityConfig())
    assert verdict(g, text(50)) is None
    assert verdict(g, text(49)) == "short_doc"
    small = quality(max_doc_words=60)
    assert verdict(small, text(60)) is None
    assert verdict(small, text(61)) == "long_doc"


def test_mean_word_length_bounds():
    g = quality()
    assert verdict(g, " ".join(["abc"] * 50)) is None  # mean 3.0
    assert verdict(g, " ".join(["abc"] * 49 + ["ab"])) == "below_avg_word_length"
    assert verdict(g, " ".join(["abcdefghij"] * 50)) is None  # mean 10.0
    assert verdict(g, " ".join(["abcdefghij"] * 49 + ["abcdefghijk"])) == "above_avg_word_length"


def test_hash_and_ellipsis_ratios():
    words = filler(45)
    g = quality()
    # ratios over all tokens: 5 / 50 = 0.1 keeps, 6 / 51 drops
    assert verdict(g, " ".join(words[:20] + ["#"] * 5 + words[20:])) is None
    assert verdict(g, " ".join(words[:20] + ["#"] * 6 + words[20:])) == "too_many_hashes"
    assert verdict(g, " ".join(words[:20] + ["…"] * 5 + words[20:])) is None
    assert verdict(g, " ".join(words[:20] + ["…"] * 6 + words[20:])) == "too_many_ellipsis"


def test_bullet_and_end_ellipsis_lines():
    line = lambda i: " ".join(filler(8, 8 * i))  # noqa: E731
    g = quality()
    assert verdict(g, "\n".join([f"- {line(i)}" for i in range(9)] + [line(9)])) is None  # 0.9
    assert verdict(g, "\n".join(f"• {line(i)}" for i in range(10))) == "too_many_bullets"
    three = [f"{line(i)}..." for i in range(3)] + [line(i) for i in range(3, 10)]
    four = [f"{line(i)}..." for i in range(4)] + [line(i) for i in range(4, 10)]
    assert verdict(g, "\n".join(three)) is None  # 0.3
    assert verdict(g, "\n".join(four)) == "too_many_end_ellipsis"


def test_alpha_ratio_and_stop_words():
    g = quality(min_alpha_words_ratio=0.8)
    assert verdict(g, " ".join(filler(40) + ["1234"] * 10)) is None  # 40 / 50 = 0.8
    assert verdict(g, " ".join(filler(40) + ["1234"] * 11)) == "below_alpha_ratio"
    distinct = quality(min_stop_words=2)
    assert verdict(distinct, " ".join([*filler(20), "the", "and"])) is None
    assert verdict(distinct, " ".join([*filler(20), "the", "the"])) == "few_stop_words"
    occurrences = quality(min_stop_words=2, stop_words_distinct=False)
    assert verdict(occurrences, " ".join([*filler(20), "the", "the"])) is None
    assert verdict(occurrences, " ".join([*filler(20), "the"])) == "few_stop_words"


def test_numbers_are_one_word_each():
    # 40 words, 10 numbers: 40 / 50 tokens have a letter (0.8 keeps); split at "." and "," it would be 40 / 70
    text = " ".join(filler(40) + ["3.8", "449,000"] * 5)
    assert verdict(quality(min_alpha_words_ratio=0.8), text) is None


def test_symbols_are_not_words():
    # deliberate: "‘" is a symbol like "’" (datatrove lists only "’"), and the full-width digit "１" is a word
    # like "1" (datatrove lists it as punctuation); "£" is a word for both
    assert non_symbol_words(("‘", "’", "...", "#", "１", "£", "word")) == ["１", "£", "word"]


# ---------------------------------------------------------------- line-wise corrections


def test_line_corrections_edit_lines_and_keep_document():
    body = [" ".join(filler(10, 10 * i)) + "." for i in range(10)]  # 100 words
    text = "\n".join([*body[:5], "Menu", *body[5:]])  # one single-word line: 1 / 101 words removed
    doc = Document(text=text, id="x")
    assert LineCorrections(LineCorrectionsConfig())(doc) is None
    assert "Menu" not in doc.text and doc.text.count("\n") == 9


@pytest.mark.parametrize(("n_upper", "expected"), [(5, None), (6, "too_many_words_removed")])
def test_five_percent_rule(n_upper, expected):
    body = [" ".join(filler(10, 10 * i)) + "." for i in range(10)]
    shout = " ".join(w.upper() for w in filler(n_upper, 500))  # dropped as upper case: 5/105 vs 6/106 words
    assert verdict(LineCorrections(LineCorrectionsConfig()), "\n".join([shout, *body])) == expected


def test_each_line_rule():
    lc = LineCorrections(LineCorrectionsConfig())
    assert lc.fix_line("ABCDE fghij") == "ABCDE fghij"  # 5 / 11 upper case
    assert lc.fix_line("ABCDEF ghij") is None  # 6 / 11
    assert lc.fix_line("12345") is None
    assert lc.fix_line("3.2K likes") is None
    assert lc.fix_line("3 apples") == "3 apples"
    assert lc.fix_line("word") is None
    assert lc.fix_line("") == ""
    assert lc.fix_line("Sign-in to see your three items") == "to see your three items"
    assert lc.fix_line("A fine article about cats. Read more...") == "A fine article about cats."
    assert lc.fix_line("You have two items in cart today") == "You have two today"
    long_line = " ".join(filler(11)) + " read more..."  # > 10 words: not edited
    assert lc.fix_line(long_line) == long_line


# ---------------------------------------------------------------- C4 and FineWeb


def sentences(n: int, start: int = 0) -> list[str]:
    return [" ".join(filler(6, 6 * i)).capitalize() + "." for i in range(start, start + n)]


def test_c4_sentence_minimum_and_line_rules():
    c4 = C4Quality(C4Config())
    assert verdict(c4, "\n".join(sentences(5))) is None
    assert verdict(c4, "\n".join(sentences(4))) == "too_few_sentences"
    doc = Document(
        text="\n".join(
            [
                *sentences(5),
                "Two words.",
                "Enable javascript to view this page now.",
                "Read our privacy policy here today.",
                "No end",
            ]
        ),
        id="x",
    )
    assert c4(doc) is None
    assert doc.text == "\n".join(sentences(5))
    assert verdict(c4, "\n".join([*sentences(5), "Lorem ipsum dolor sit amet."])) == "lorem_ipsum"
    assert verdict(c4, "\n".join([*sentences(5), "function f() { return 1; } now."])) == "curly_bracket"
    fw = C4Quality(C4Config(filter_no_terminal_punct=False))
    doc = Document(text="\n".join([*sentences(5), "a line without end punctuation"]), id="x")
    assert fw(doc) is None and doc.text.endswith("without end punctuation")


def test_c4_abbreviations_end_no_sentence():
    # four lines of one sentence each: "Mr. ", "Dr. " and "Jan. " end none, so the page has 4 < 5 sentences
    line = "Mr. {} and Dr. {} met on Jan. 5 at noon."
    lines = [line.format(*filler(2, 2 * i)) for i in range(4)]
    assert verdict(C4Quality(C4Config()), "\n".join(lines)) == "too_few_sentences"
    devanagari = ["यह पहला वाक्य है। यह दूसरा वाक्य है। यह तीसरा है।", "यह चौथा वाक्य है। यह पाँचवाँ है।"]
    assert verdict(C4Quality(C4Config(filter_no_terminal_punct=False)), "\n".join(devanagari)) is None


def test_c4_lines_are_unicode_lines():
    doc = Document(text="\u2028".join(sentences(5)), id="x")  # LINE SEPARATOR ends a line (str.splitlines)
    assert C4Quality(C4Config())(doc) is None
    assert doc.text == "\n".join(sentences(5))


def fw_lines(n: int, start: int = 0, end: str = ".") -> list[str]:
    """Distinct lines longer than 30 characters."""
    return [" ".join(filler(7, 7 * i)) + end for i in range(start, start + n)]


def test_fineweb_punctuation_ratio():
    fw = FineWebQuality(FineWebConfig(char_duplicates_ratio=1.0))
    assert verdict(fw, "\n".join(fw_lines(3) + fw_lines(22, 3, end=""))) is None  # 3 / 25 = 0.12
    assert verdict(fw, "\n".join(fw_lines(2) + fw_lines(23, 2, end=""))) == "line_punct_ratio"


def test_fineweb_line_ends_are_sentence_terminals():
    # "…" ends no sentence, and a line ending in ". " ends in a space: 2 / 25 lines end in punctuation
    fw = FineWebQuality(FineWebConfig(char_duplicates_ratio=1.0))
    assert verdict(fw, "\n".join(fw_lines(2) + fw_lines(23, 2, end="…"))) == "line_punct_ratio"
    assert verdict(fw, "\n".join(fw_lines(2) + fw_lines(23, 2, end=". "))) == "line_punct_ratio"
    assert verdict(fw, "\n".join(fw_lines(3) + fw_lines(22, 3, end="…"))) is None  # 3 / 25 = 0.12
    assert verdict(fw, "\n".join(fw_lines(1, end="।") + fw_lines(2, 1) + fw_lines(22, 3, end=""))) is None


def test_sentence_terminals_are_unicode_sentence_terminal():
    # deliberate: one standard set for C4's sentences and FineWeb's line ends; datatrove keeps two hand lists
    # (spaCy's for sentences, its own for lines) that lack e.g. "︒" and, for lines, add Khmer "៖"
    assert {".", "!", "?", "。", "।", "॥", "؟", "︒"} <= SENTENCE_TERMINALS
    assert not {"…", ";", ":", '"', "៖"} & SENTENCE_TERMINALS


def test_fineweb_short_lines():
    fw = FineWebQuality(FineWebConfig())
    short = lambda n: [f"Short {w}." for w in filler(n, 900)]  # noqa: E731
    assert verdict(fw, "\n".join(short(67) + fw_lines(33))) is None  # 0.67
    assert verdict(fw, "\n".join(short(68) + fw_lines(32))) == "short_line_ratio"


def test_fineweb_duplicated_characters():
    fw = FineWebQuality(FineWebConfig())
    lines = fw_lines(120)
    dup = lines[0]
    text = "\n".join([*lines, dup])
    ratio = len(dup) / (len(text) - text.count("\n"))
    assert ratio < 0.01
    assert verdict(fw, text) is None
    text = "\n".join([*lines[:90], dup])
    assert len(dup) / (len(text) - text.count("\n")) > 0.01
    assert verdict(fw, text) == "char_dup_ratio"


def test_fineweb_list_ratio():
    fw = FineWebQuality(FineWebConfig(short_line_thr=1.0))
    # newlines / tokens: 3 words + "." per line -> 4 tokens; 0.3 needs newlines <= 0.3 * tokens
    lines = [" ".join(filler(3, 3 * i)) + "." for i in range(40)]
    assert verdict(fw, "\n".join(lines)) is None  # 39 / 160 = 0.24
    lines = [" ".join(filler(2, 2 * i)) + "." for i in range(40)]  # 39 / 120 = 0.325
    assert verdict(fw, "\n".join(lines)) == "list_ratio"


# ---------------------------------------------------------------- URL, language, extraction, PII


def test_url_filter_word_lists_and_domains():
    uf = UrlFilter(UrlFilterConfig(extra_domains=["blocked.example"]))
    assert verdict(uf, "x", "https://www.example.com/news/cats") is None
    assert verdict(uf, "x", "https://example.com/free-porn-videos") == "hard_word"
    assert verdict(uf, "x", "https://example.com/sex-education") is None  # one soft word
    assert verdict(uf, "x", "https://example.com/sex-webcam") == "soft_words"  # two distinct soft words
    assert verdict(uf, "x", "https://example.com/videos/xvi-deos") == "strict_subword"  # broken-up word
    assert verdict(uf, "x", "https://massachusetts.gov/about") is None  # "ass" only inside a word
    assert verdict(uf, "x", "https://blocked.example/a") == "domain"
    assert verdict(uf, "x", "https://cdn.blocked.example/a") == "domain"
    assert verdict(uf, "x", "https://notblocked.example/a") is None
    assert verdict(uf, "x", "") is None
    three = UrlFilter(UrlFilterConfig(soft_threshold=3))
    assert verdict(three, "x", "https://example.com/sex-webcam") is None


def test_url_filter_blocklist_file(tmp_path):
    (tmp_path / "domains").write_text("bad.example\nworse.example\n")
    uf = UrlFilter(UrlFilterConfig(blocklist_file=str(tmp_path / "domains")))
    assert verdict(uf, "x", "http://a.worse.example/") == "domain"
    assert verdict(uf, "x", "http://good.example/") is None


ENGLISH = (
    "The committee published its annual report on Tuesday, describing how the city plans to improve public "
    "transport and reduce traffic in the coming years."
)
FRENCH = (
    "Le comité a publié mardi son rapport annuel, qui décrit comment la ville va améliorer les transports."
)


def test_language_threshold_both_sides():
    lid = Language(LanguageConfig())
    assert LanguageConfig().threshold == 0.65 and LanguageConfig().languages == ["en"]
    doc = Document(text=ENGLISH, id="en")
    assert lid(doc) is None
    assert doc.metadata["language"] == "en" and doc.metadata["language_score"] > 0.9
    fr = Document(text=FRENCH, id="fr")
    assert lid(fr) == "other_language" and fr.metadata["language"] == "fr"
    _, score = lid.predict(ENGLISH)
    assert Language(LanguageConfig(threshold=score - 1e-4))(Document(text=ENGLISH, id="a")) is None
    assert Language(LanguageConfig(threshold=score + 1e-4))(Document(text=ENGLISH, id="b")) == "low_score"
    assert Language(LanguageConfig(languages=[]))(Document(text=FRENCH, id="c")) is None


ARTICLE = (
    "<html><head><title>t</title></head><body><nav>Home | About</nav><article><h1>Cats</h1>"
    "<p>Cats are small carnivorous mammals that have lived with people for thousands of years. See "
    "https://example.com/cats for more about them and their long history with humans.</p>\n\n\n\n"
    "<p>They sleep for most of the day and hunt at dawn and dusk, which is when their prey is active.</p>"
    "</article><footer>Copyright</footer></body></html>"
)


def test_extract_with_refinedweb_cleanup():
    doc = Document(text=ARTICLE, id="a", html=True)
    assert Extract(ExtractConfig(max_newlines=2, remove_urls=True))(doc) is None
    assert not doc.html
    assert "Cats are small carnivorous mammals" in doc.text and "hunt at dawn" in doc.text
    assert "https://" not in doc.text and "\n\n\n" not in doc.text
    assert "Copyright" not in doc.text
    text_doc = Document(text="already text", id="b")
    assert Extract(ExtractConfig())(text_doc) is None and text_doc.text == "already text"
    assert Extract(ExtractConfig())(Document(text="<html><body></body></html>", id="c", html=True)) == "empty"


def test_extract_timeout_and_errors(monkeypatch):
    import time

    import trafilatura

    def hang(*a, **k):
        time.sleep(5)

    monkeypatch.setattr(trafilatura, "extract", hang)
    t0 = time.perf_counter()
    assert Extract(ExtractConfig(timeout=0.2))(Document(text=ARTICLE, id="a", html=True)) == "timeout"
    assert time.perf_counter() - t0 < 2

    def boom(*a, **k):
        raise ValueError("broken markup")

    monkeypatch.setattr(trafilatura, "extract", boom)
    assert Extract(ExtractConfig())(Document(text=ARTICLE, id="a", html=True)) == "extract_error"


def test_pii_masks_emails_and_public_ips_only():
    doc = Document(text="Mail jane.doe@corp.com or bob@x.org; server 8.8.8.8, router 192.168.1.1.", id="p")
    assert Pii(PiiConfig())(doc) is None
    assert doc.text == (
        "Mail email@example.com or firstname.lastname@example.org; server 192.0.2.1, router 192.168.1.1."
    )
