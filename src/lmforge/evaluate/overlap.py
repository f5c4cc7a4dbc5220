"""N-gram overlap metrics for generated text: BLEU and chrF (translation) through sacreBLEU, ROUGE
(summarization) through Google's ``rouge_score``.

They are called, never reimplemented: a score is only comparable with published ones when it is the
reference implementation's, with its tokenisation and smoothing. BLEU and chrF are corpus-level (n-gram
counts summed over all segments, one score) and come with sacreBLEU's signature string (references,
case, tokeniser, smoothing, version), which a report must quote. ROUGE is per segment, averaged.
Scores are percentages (0-100), like sacreBLEU's and the papers'. The libraries are the ``eval`` extra
and are imported only when a metric runs.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

from lmforge.errors import LmforgeError
from lmforge.evaluate.metrics import PRF

# sacreBLEU's tokenisers that need nothing downloaded: 13a is mteval-v13a.pl (the WMT standard), zh splits
# Chinese characters (use it for Chinese targets: 13a sees a whole unspaced sentence as one word), intl is
# 13a with Unicode punctuation, char splits every character, none keeps the text's own spaces.
TOKENIZERS = ("13a", "zh", "intl", "char", "none")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

References = Sequence[str | Sequence[str]]  # per segment: its reference, or several


@dataclass(frozen=True)
class BleuScore:
    """Corpus BLEU = BP * exp(mean log p_n), with what it is made of."""

    score: float
    precisions: tuple[float, ...]  # modified n-gram precisions p_1..p_4, percent (smoothed where 0)
    brevity_penalty: float  # min(1, exp(1 - ref_len / sys_len))
    sys_len: int  # hypothesis tokens
    ref_len: int  # reference tokens (per segment, the reference closest in length)
    signature: str


@dataclass(frozen=True)
class ChrfScore:
    score: float
    signature: str


def _library(module: str, metric: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise LmforgeError(f"{metric} needs the {module} package: pip install 'lmforge[eval]'") from None


def _reference_lists(hypotheses: Sequence[str], references: References) -> list[list[str]]:
    """Each segment's references as a list (a lone string is one reference), checked against the
    hypotheses: one entry per hypothesis, at least one reference each."""
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise LmforgeError("hypotheses and references must be lists (one entry per segment), not a string")
    if not hypotheses:
        raise LmforgeError("no hypotheses to score")
    if len(hypotheses) != len(references):
        raise LmforgeError(
            f"{len(hypotheses)} hypotheses but {len(references)} references: they must pair up one to one"
        )
    lists = [[refs] if isinstance(refs, str) else list(refs) for refs in references]
    for i, refs in enumerate(lists):
        if not refs or not all(isinstance(r, str) for r in refs):
            raise LmforgeError(f"segment {i}: expected one or more reference strings, got {references[i]!r}")
    return lists


def _streams(lists: list[list[str]]) -> list[list[str | None]]:
    """Per-segment reference lists turned into sacreBLEU's reference streams (stream k holds every
    segment's k-th reference); a segment with fewer references is padded with None, which sacreBLEU
    skips."""
    width = max(len(refs) for refs in lists)
    return [[refs[k] if k < len(refs) else None for refs in lists] for k in range(width)]


def bleu(
    hypotheses: Sequence[str], references: References, tokenize: str = "13a", lowercase: bool = False
) -> BleuScore:
    """sacreBLEU's corpus BLEU with its defaults (4-grams, exp smoothing of zero counts). ``references``
    has one entry per hypothesis: a string or a list of strings (several references per segment, their
    number may vary)."""
    if tokenize not in TOKENIZERS:
        raise LmforgeError(f"BLEU tokenize={tokenize!r}: expected one of {', '.join(TOKENIZERS)}")
    lists = _reference_lists(hypotheses, references)
    sacrebleu = _library("sacrebleu", "BLEU")
    metric = sacrebleu.BLEU(tokenize=tokenize, lowercase=lowercase)
    result = metric.corpus_score(list(hypotheses), _streams(lists))
    return BleuScore(
        score=result.score,
        precisions=tuple(result.precisions),
        brevity_penalty=result.bp,
        sys_len=result.sys_len,
        ref_len=result.ref_len,
        signature=str(metric.get_signature()),
    )


def bleu_statistics(hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "13a") -> list[int]:
    """BLEU's sufficient statistics summed over the segments (sys_len, ref_len, matching n-grams and
    total n-grams for n = 1..4): sums of parts add up to the sums of the whole, so a corpus scored in
    batches, or across processes, gets the score ``bleu_from_statistics`` computes once at the end."""
    lists = _reference_lists(hypotheses, references)
    metric = _library("sacrebleu", "BLEU").BLEU(tokenize=tokenize)
    per_segment = metric._extract_corpus_statistics(list(hypotheses), _streams(lists))
    return [sum(column) for column in zip(*per_segment)]


def bleu_from_statistics(statistics: Sequence[float], tokenize: str = "13a") -> float:
    """Corpus BLEU (percent) from summed ``bleu_statistics``."""
    metric = _library("sacrebleu", "BLEU").BLEU(tokenize=tokenize)
    return metric._compute_score_from_stats([round(x) for x in statistics]).score


def chrf(
    hypotheses: Sequence[str], references: References, word_order: int = 0, lowercase: bool = False
) -> ChrfScore:
    """sacreBLEU's corpus chrF: character 1-6-gram F-score with beta = 2 (recall weighs more), spaces
    ignored, so it needs no tokeniser and works for any script; ``word_order=2`` adds word 1-2-grams
    (chrF++). Each segment counts against its best-scoring reference."""
    lists = _reference_lists(hypotheses, references)
    sacrebleu = _library("sacrebleu", "chrF")
    metric = sacrebleu.CHRF(word_order=word_order, lowercase=lowercase)
    result = metric.corpus_score(list(hypotheses), _streams(lists))
    return ChrfScore(score=result.score, signature=str(metric.get_signature()))


def split_sentences(text: str) -> str:
    """The text with one sentence per line, which rougeLsum needs (it reads sentences from newlines).

    Existing line breaks are kept, and a line is also broken after ``.``, ``!`` or ``?`` followed by
    whitespace. This stands in for the HF examples' ``nltk.sent_tokenize`` without its punkt download;
    unlike punkt it also breaks after abbreviations ("Mr. Smith"), which moves rougeLsum slightly.
    """
    lines = (line.strip() for line in text.splitlines())
    return "\n".join(s for line in lines if line for s in _SENTENCE_END.split(line))


def rouge(
    hypotheses: Sequence[str],
    references: References,
    types: Sequence[str] = ROUGE_TYPES,
    stem: bool = True,
) -> dict[str, PRF]:
    """ROUGE precision, recall and F-measure per type, each averaged over segments, in percent.

    rougeN counts clipped n-gram overlaps, rougeL is the longest common subsequence of the token
    sequences, rougeLsum the union LCS of each reference sentence against all hypothesis sentences
    (sentences split by :func:`split_sentences`). Stemming is on by default because the summarization
    literature and the HF examples report ROUGE with Porter stemming ("running" counts as "run").
    rouge_score's tokenizer lower-cases and keeps only ``[a-z0-9]`` runs: other letters are dropped, so
    these scores are for English (a Chinese summary scores 0). With several references per segment each
    is scored and the one of highest F-measure counts, per type (rouge_score's ``score_multi``).
    """
    unknown = [t for t in types if t not in ROUGE_TYPES]
    if unknown or not types:
        raise LmforgeError(f"ROUGE types {unknown or list(types)}: expected some of {', '.join(ROUGE_TYPES)}")
    lists = _reference_lists(hypotheses, references)
    rouge_scorer = _library("rouge_score.rouge_scorer", "ROUGE")
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=stem)
    sums = {t: [0.0, 0.0, 0.0] for t in types}
    for hypothesis, refs in zip(hypotheses, lists):
        scores = scorer.score_multi([split_sentences(r) for r in refs], split_sentences(hypothesis))
        for t in types:
            for i, value in enumerate(scores[t]):  # Score(precision, recall, fmeasure)
                sums[t][i] += value
    n = len(lists)
    return {t: PRF(*(100.0 * s / n for s in sums[t])) for t in types}
