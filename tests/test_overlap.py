"""BLEU, chrF and ROUGE through their reference libraries: hand-counted cases pin what each wrapper passes
(tokeniser, references, stemming, sentence splitting, averaging) and what it reports."""

from __future__ import annotations

import math
import sys

import pytest

from lmforge.errors import LmforgeError
from lmforge.evaluate.overlap import bleu, bleu_from_statistics, bleu_statistics, chrf, rouge, split_sentences


def test_bleu_by_hand_with_exp_smoothing():
    # hyp "the cat sat on the mat" vs ref "the cat is on the mat" (13a: 6 tokens each, so BP = 1):
    #   1-grams: the x2, cat, on, mat match -> p1 = 5/6
    #   2-grams: "the cat", "on the", "the mat" -> p2 = 3/5
    #   3-grams: "on the mat" -> p3 = 1/4
    #   4-grams: none of 3 match; sacreBLEU's default smoothing "exp" replaces the k-th zero count by
    #   1/2^k, so p4 = (1/2) / 3 = 1/6
    #   BLEU = BP * exp(sum 1/4 log p_n) = (5/6 * 3/5 * 1/4 * 1/6) ** (1/4) = (1/48) ** (1/4) = 37.99
    result = bleu(["the cat sat on the mat"], ["the cat is on the mat"])
    assert result.precisions == pytest.approx((500 / 6, 60.0, 25.0, 100 / 6))
    assert result.brevity_penalty == 1.0
    assert (result.sys_len, result.ref_len) == (6, 6)
    assert result.score == pytest.approx(100 * (1 / 48) ** 0.25)
    assert "tok:13a" in result.signature and "smooth:exp" in result.signature


def test_bleu_brevity_penalty_by_hand():
    # every n-gram of the hypothesis matches (p_n = 1), but it has c = 6 tokens and the reference r = 7:
    # BP = exp(1 - r/c) = exp(-1/6), BLEU = 100 * BP = 84.65; a longer hypothesis is not rewarded (BP = 1)
    short = bleu(["the cat sat on the mat"], ["the cat sat on the mat today"])
    assert short.precisions == pytest.approx((100.0,) * 4)
    assert short.brevity_penalty == pytest.approx(math.exp(-1 / 6))
    assert short.score == pytest.approx(100 * math.exp(-1 / 6))
    assert bleu(["the cat sat on the mat today"], ["the cat sat on the mat"]).brevity_penalty == 1.0


def test_bleu_perfect_match_is_100_and_lowercase_option():
    hyps = ["A man rides a horse .", "Two dogs play in the snow ."]
    assert bleu(hyps, hyps).score == pytest.approx(100.0)
    upper = [h.upper() for h in hyps]
    assert bleu(upper, hyps).score < 10
    lowered = bleu(upper, hyps, lowercase=True)
    assert lowered.score == pytest.approx(100.0) and "case:lc" in lowered.signature


def test_bleu_several_references_by_hand():
    # refs "the cat is on the mat" and "a cat sat on the mat": n-grams are clipped by the max count in
    # any reference. 1-grams 6/6, 2-grams 5/5 ("cat sat", "sat on" from ref 2), 3-grams 3/4 ("the cat sat"
    # is in neither), 4-grams 2/3 -> BLEU = (1 * 1 * 3/4 * 2/3) ** (1/4) = 0.5 ** 0.25 = 84.09
    refs = ["the cat is on the mat", "a cat sat on the mat"]
    result = bleu(["the cat sat on the mat"], [refs])
    assert result.score == pytest.approx(100 * 0.5**0.25)
    assert "nrefs:2" in result.signature
    # the number of references may vary per segment
    mixed = bleu(["the cat sat on the mat", "a dog"], [refs, ["a dog"]])
    assert mixed.sys_len == 8 and "nrefs:var" in mixed.signature


def test_bleu_zh_tokenizer_splits_chinese_characters():
    hyp, ref = ["我喜欢猫。"], ["我喜欢狗。"]
    # 13a splits off ASCII punctuation only: each sentence is one token "我喜欢猫。", which does not match
    whole = bleu(hyp, ref)
    # zh: 我 喜 欢 猫 。 -- 4 of 5 characters match
    chars = bleu(hyp, ref, tokenize="zh")
    assert (whole.sys_len, whole.precisions[0]) == (1, 0.0)
    assert (chars.sys_len, chars.precisions[0]) == (5, pytest.approx(80.0))
    assert chars.score > whole.score
    assert "tok:zh" in chars.signature and "tok:13a" in whole.signature


def test_bleu_statistics_add_up_to_the_corpus_score():
    """Counts of two halves, summed, give the corpus BLEU of the whole (how dev BLEU is scored in
    batches and across processes during training)."""
    hyps = ["the cat sat on the mat", "a dog runs", "it is raining today", "hello world"]
    refs = ["the cat sat on a mat", "the dog runs", "it rains today", "hello there world"]
    halves = [bleu_statistics(hyps[:2], refs[:2]), bleu_statistics(hyps[2:], refs[2:])]
    summed = [a + b for a, b in zip(*halves)]
    assert bleu_from_statistics(summed) == pytest.approx(bleu(hyps, refs).score, abs=1e-9)
    assert bleu_from_statistics(halves[0]) != pytest.approx(bleu(hyps, refs).score, abs=1e-3)


def test_chrf_by_hand():
    # hyp "ab", ref "abc", beta = 2. Character n-grams: n=1: P = 2/2, R = 2/3; n=2 ("ab" vs "ab", "bc"):
    # P = 1, R = 1/2; n >= 3: the hypothesis has none, so those orders are left out of the averages.
    # P = 1, R = (2/3 + 1/2) / 2 = 7/12; chrF = (1 + 4) P R / (4 P + R) = (35/12) / (55/12) = 7/11
    result = chrf(["ab"], ["abc"])
    assert result.score == pytest.approx(700 / 11)
    assert "nc:6" in result.signature and "nw:0" in result.signature
    assert chrf(["ab"], ["abc"], word_order=2).signature.count("nw:2") == 1  # chrF++
    assert chrf(["The cat."], ["The cat."]).score == pytest.approx(100.0)


def test_rouge_by_hand():
    # ref "the black cat sat on the mat" (7 tokens), hyp "the cat was on the mat" (6 tokens)
    #   ROUGE-1: overlap the x2, cat, on, mat = 5 -> P = 5/6, R = 5/7, F = 2PR/(P+R) = 10/13
    #   ROUGE-2: "on the", "the mat" = 2 of 5 hyp / 6 ref bigrams -> P = 2/5, R = 1/3, F = 4/11
    #   ROUGE-L: LCS "the cat on the mat" = 5 -> the same P, R, F as ROUGE-1 here
    scores = rouge(["the cat was on the mat"], ["the black cat sat on the mat"])
    assert scores["rouge1"] == pytest.approx((500 / 6, 500 / 7, 1000 / 13))
    assert scores["rouge2"] == pytest.approx((40.0, 100 / 3, 400 / 11))
    assert scores["rougeL"] == pytest.approx((500 / 6, 500 / 7, 1000 / 13))
    # LCS respects order: "the mat was on the cat" keeps the 5 shared words but its LCS is "the on the"
    swapped = rouge(["the mat was on the cat"], ["the black cat sat on the mat"], types=["rouge1", "rougeL"])
    assert swapped["rouge1"].f1 == pytest.approx(1000 / 13)
    assert swapped["rougeL"] == pytest.approx((50.0, 300 / 7, 600 / 13))


def test_rouge_stemming_is_on_by_default():
    # stemmed: the, dog, are, run vs the, dog, run -> 3 shared; unstemmed only "the" is
    hyp, ref = ["the dogs are running"], ["the dog runs"]
    assert rouge(hyp, ref)["rouge1"].recall == pytest.approx(100.0)
    assert rouge(hyp, ref, stem=False)["rouge1"].recall == pytest.approx(100 / 3)


def test_rouge_lsum_scores_sentences_rougel_the_whole_text():
    # the same two sentences in the other order: the whole-text LCS is one sentence (3 of 6 tokens), while
    # Lsum matches each reference sentence against every hypothesis sentence (6 of 6)
    assert split_sentences("The dog ran. The cat sat!\nIt rained") == "The dog ran.\nThe cat sat!\nIt rained"
    scores = rouge(["the dog ran. the cat sat."], ["the cat sat. the dog ran."])
    assert scores["rougeL"].f1 == pytest.approx(50.0)
    assert scores["rougeLsum"].f1 == pytest.approx(100.0)
    assert scores["rouge1"].f1 == pytest.approx(100.0)


def test_rouge_several_references_take_the_best_and_segments_average():
    # segment 1 scores 100 against its second reference (the max, not the mean), segment 2 scores 0
    scores = rouge(["the cat sat", "a dog"], [["a dog ran", "the cat sat"], "the cat"], types=["rouge1"])
    assert scores["rouge1"] == pytest.approx((50.0, 50.0, 50.0))
    # rouge_score's tokenizer keeps only [a-z0-9]: Chinese text has no tokens at all
    assert rouge(["我喜欢猫"], ["我喜欢猫"], types=["rouge1"])["rouge1"].f1 == 0.0


def test_bad_arguments_are_clear_errors():
    with pytest.raises(LmforgeError, match="2 hypotheses but 1 references"):
        bleu(["a", "b"], ["a"])
    with pytest.raises(LmforgeError, match="tokenize='spm'"):
        bleu(["a"], ["a"], tokenize="spm")
    with pytest.raises(LmforgeError, match="segment 0"):
        chrf(["a"], [[]])
    with pytest.raises(LmforgeError, match="rouge3"):
        rouge(["a"], ["a"], types=["rouge3"])
    with pytest.raises(LmforgeError, match="no hypotheses"):
        rouge([], [])


def test_a_missing_library_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # what an uninstalled package looks like to import
    with pytest.raises(LmforgeError, match=r"pip install 'lmforge\[eval\]'"):
        bleu(["a"], ["a"])
