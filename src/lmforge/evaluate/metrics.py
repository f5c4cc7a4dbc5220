"""Task metrics as plain functions: classification, entity-level NER (seqeval's rules), SQuAD v1.1 EM/F1.

Each metric is split into sums and a score made from them, because validation adds ``eval_step`` sums
over batches and ranks (``train/validation.py``): a confusion matrix or per-type (tp, fp, fn) counts add
up cell by cell, and precision, recall and F1 are computed once, from the totals.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

from lmforge.atomic import atomic_file
from lmforge.errors import LmforgeError

L = TypeVar("L", bound=Hashable)
_FIELDS = ("tp", "fp", "fn")


@dataclass(frozen=True)
class Counts:
    """True positives, false positives and false negatives of one class or entity type; they add."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)


class PRF(NamedTuple):
    precision: float
    recall: float
    f1: float


def _ratio(num: float, den: float) -> float:
    """num / den, and 0 for 0 / 0 (nothing predicted, or nothing to find), as seqeval and sklearn do."""
    return num / den if den else 0.0


def _same_length(gold: Sequence, pred: Sequence, what: str) -> None:
    if len(gold) != len(pred):
        raise LmforgeError(f"{len(gold)} gold {what} but {len(pred)} predicted: they must pair up one to one")


def prf(c: Counts) -> PRF:
    """P = tp / (tp + fp), R = tp / (tp + fn), F1 = 2PR / (P + R), each 0 where its denominator is."""
    p, r = _ratio(c.tp, c.tp + c.fp), _ratio(c.tp, c.tp + c.fn)
    return PRF(p, r, _ratio(2 * p * r, p + r))


def micro(counts: Mapping[L, Counts]) -> PRF:
    """Micro average: P/R/F1 of the counts summed over classes or types (seqeval's default average)."""
    return prf(sum(counts.values(), Counts()))


def macro_f1(counts: Mapping[L, Counts]) -> float:
    """Macro-F1: the unweighted mean of the per-class F1, so rare classes weigh as much as frequent ones."""
    return _ratio(sum(prf(c).f1 for c in counts.values()), len(counts))


def counts_to_sums(counts: Mapping[str, Counts]) -> dict[str, int]:
    """Flat {"tp/TYPE": n, "fp/TYPE": n, "fn/TYPE": n}: the shape ``eval_step`` sums take (keep the types
    fixed, zeros included, so every rank reports the same keys)."""
    return {f"{field}/{kind}": getattr(c, field) for kind, c in counts.items() for field in _FIELDS}


def counts_from_sums(sums: Mapping[str, float]) -> dict[str, Counts]:
    """The per-type counts back from summed ``counts_to_sums`` outputs (other keys are ignored)."""
    fields: dict[str, dict[str, int]] = {}
    for key, value in sums.items():
        field, sep, kind = key.partition("/")
        if sep and field in _FIELDS:
            fields.setdefault(kind, {})[field] = round(value)
    return {kind: Counts(**f) for kind, f in sorted(fields.items())}


# --- classification ---------------------------------------------------------------------------------


def accuracy(gold: Sequence[L], pred: Sequence[L]) -> float:
    """correct / total (sum both over batches to accumulate)."""
    _same_length(gold, pred, "labels")
    return _ratio(sum(g == p for g, p in zip(gold, pred)), len(gold))


def confusion_matrix(gold: Sequence[L], pred: Sequence[L], labels: Sequence[L]) -> list[list[int]]:
    """M[i][j] = how many examples of gold label ``labels[i]`` were predicted ``labels[j]`` (rows = gold).
    Matrices of batches add cell by cell; every classification score derives from the total."""
    _same_length(gold, pred, "labels")
    index = {label: i for i, label in enumerate(labels)}
    unknown = (set(gold) | set(pred)) - index.keys()
    if unknown:
        raise LmforgeError(f"labels {sorted(map(str, unknown))} are not among {list(labels)}")
    matrix = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, pred):
        matrix[index[g]][index[p]] += 1
    return matrix


def class_counts(matrix: Sequence[Sequence[int]], labels: Sequence[L]) -> dict[L, Counts]:
    """Per class c: tp = M[c][c], fp = the rest of column c, fn = the rest of row c."""
    counts = {}
    for c, label in enumerate(labels):
        tp = matrix[c][c]
        counts[label] = Counts(tp, sum(row[c] for row in matrix) - tp, sum(matrix[c]) - tp)
    return counts


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], labels: Sequence[Hashable], path: str | Path, title: str = ""
) -> Path:
    """The matrix as a PNG heat map with counts in the cells, written atomically (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    side = max(4.0, 1.5 + 0.6 * n)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    top = max((max(row) for row in matrix), default=0)
    for i in range(n):
        for j in range(n):
            color = "white" if matrix[i][j] > top / 2 else "black"
            ax.text(j, i, str(matrix[i][j]), ha="center", va="center", color=color, fontsize=8)
    names = [str(label) for label in labels]
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


# --- token classification: entity-level scores with seqeval's default (conlleval) rules ----------------


def _parse_tag(tag: str) -> tuple[str, str]:
    """Split B-PER into ("B", "PER"); O is ("O", "")."""
    if tag == "O":
        return "O", ""
    if tag[:2] not in ("B-", "I-") or len(tag) == 2:
        raise LmforgeError(f"tag {tag!r} is not a BIO tag: expected O, B-TYPE or I-TYPE")
    return tag[0], tag[2:]


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The (type, start, end) chunks of a BIO tag sequence, end exclusive, as seqeval reads them.

    A token continues the chunk before it iff it is I- of the same type; any other B- or I- starts a new
    chunk. So an I- after O, or after a chunk of another type, starts one (it is not dropped), and
    "B-X I-Y" is two chunks.
    """
    chunks = []
    prev, prev_kind, start = "O", "", 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, kind = _parse_tag(tag)
        continues = prefix == "I" and prev != "O" and kind == prev_kind
        if prev != "O" and not continues:
            chunks.append((prev_kind, start, i))
        if prefix != "O" and not continues:
            start = i
        prev, prev_kind = prefix, kind
    return chunks


def entity_counts(
    gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], types: Iterable[str] = ()
) -> dict[str, Counts]:
    """Per entity type, over sentences: a predicted chunk that is also a gold chunk (same type, same span)
    is a tp, any other predicted chunk a fp, any other gold chunk a fn. ``types`` are always reported,
    zeros included, so that every batch and rank returns the same keys."""
    _same_length(gold, pred, "sentences")
    counts = {kind: Counts() for kind in types}
    for gold_tags, pred_tags in zip(gold, pred):
        _same_length(gold_tags, pred_tags, "tags in a sentence")
        g, p = set(entities(gold_tags)), set(entities(pred_tags))
        for chunk in g | p:
            found = Counts(tp=int(chunk in g and chunk in p), fp=int(chunk not in g), fn=int(chunk not in p))
            counts[chunk[0]] = counts.get(chunk[0], Counts()) + found
    return dict(sorted(counts.items()))


# --- extractive QA: SQuAD v1.1 (the official evaluate-v1.1.py) ---------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower-case, drop ASCII punctuation, then the articles a/an/the, and collapse whitespace: answers
    that differ only in these count as equal."""
    no_punctuation = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", no_punctuation).split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 if the normalised answers are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """F1 of the bags of normalised tokens: common = |pred ∩ gold| (multiset), P = common / |pred|,
    R = common / |gold|."""
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    p, r = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * p * r / (p + r)


def squad_sums(predictions: Sequence[str], gold_answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """{"exact_match", "f1"}: per-question scores summed, each the max over that question's gold answers;
    "total": the number of questions."""
    _same_length(gold_answers, predictions, "questions")
    sums = {"exact_match": 0.0, "f1": 0.0, "total": len(predictions)}
    for prediction, golds in zip(predictions, gold_answers):
        sums["exact_match"] += max(exact_match(prediction, g) for g in golds)
        sums["f1"] += max(token_f1(prediction, g) for g in golds)
    return sums


def squad_scores(sums: Mapping[str, float]) -> dict[str, float]:
    """EM and F1 in percent: 100 × sum / questions, as the official script computes them."""
    return {key: _ratio(100.0 * sums[key], sums["total"]) for key in ("exact_match", "f1")}
