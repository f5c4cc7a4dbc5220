"""Token classification (NER) outside training: CoNLL files, sub-word alignment, a fine-tuned tagger's
word tags, and the report ``lmforge eval ner`` prints and writes (entity-level precision/recall/F1 with
seqeval's default rules, per entity type, and token accuracy).

The model reads sub-word tokens but tags are per word, so each word is represented by its first
sub-token: in training only that position carries the word's tag (the others and the special tokens are
IGNORE_INDEX), and a word's predicted tag is the argmax there. A sentence longer than ``max_len`` tokens
is cut: its words past the cut are dropped from training and predicted "O" in evaluation, so every gold
entity is still counted (a cut entity is a false negative, not a missing one). Fine-tuning
(``tasks/ner.py``) uses these same functions, so validation and ``lmforge eval ner`` score alike.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lmforge.atomic import atomic_file
from lmforge.config import ConfigError
from lmforge.errors import LmforgeError
from lmforge.evaluate.classify import TaskEvalConfig, load_classifier, open_text
from lmforge.evaluate.metrics import accuracy, entity_counts, micro, prf
from lmforge.models.task import TaskConfig, TaskModel, encode, pad
from lmforge.tokenizer.core import Tokenizer

OUTSIDE = "O"  # the tag of a word in no entity, and the prediction for a word the model did not see
DOCSTART = "-DOCSTART-"  # CoNLL-2003's document separator line


@dataclass
class NerEvalConfig(TaskEvalConfig):
    """Settings of ``lmforge eval ner``: data is a CoNLL file (word first, BIO tag last; plain or .gz)."""


@dataclass(frozen=True)
class Sentence:
    words: list[str]
    tags: list[str]
    where: str  # file:line of its first word, for messages

    def line_of(self, i: int) -> str:
        """file:line of word ``i`` (a sentence's lines are consecutive)."""
        path, _, line = self.where.rpartition(":")
        return f"{path}:{int(line) + i}"


# --- reading CoNLL files --------------------------------------------------------------------------------


def is_tag(tag: str) -> bool:
    """O, B-TYPE or I-TYPE (IOB2/IOB1; IOBES and others are not read)."""
    return tag == OUTSIDE or (tag[:2] in ("B-", "I-") and len(tag) > 2)


def _columns(line: str) -> list[str]:
    """Tab-separated columns when the line has a tab (a word may then hold spaces), else whitespace."""
    line = line.strip()
    return [c.strip() for c in line.split("\t")] if "\t" in line else line.split()


def read_conll(path: str | Path) -> list[Sentence]:
    """The sentences of a CoNLL file, plain or .gz: one word per line, the word in the first column and
    its BIO tag in the last (columns between, e.g. POS tags, are ignored); blank or whitespace-only lines
    end a sentence, ``-DOCSTART-`` lines are skipped. A bad line is an error naming file:line and field."""
    p = Path(path)
    if not p.is_file():
        raise LmforgeError(f"{p}: no such file")
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    start = 0

    def close() -> None:
        if words:
            sentences.append(Sentence(words.copy(), tags.copy(), f"{p}:{start}"))
            words.clear()
            tags.clear()

    with open_text(p) as f:
        for line_no, line in enumerate(f, 1):
            columns = _columns(line)
            if not columns or columns[0] == DOCSTART:
                close()
                continue
            if len(columns) < 2:
                raise LmforgeError(f"{p}:{line_no}: field 'tag': missing (expected the word, the tag last)")
            if not is_tag(columns[-1]):
                raise LmforgeError(
                    f"{p}:{line_no}: field 'tag': {columns[-1]!r} is not a BIO tag (O, B-TYPE or I-TYPE)"
                )
            if not words:
                start = line_no
            words.append(columns[0])
            tags.append(columns[-1])
    close()
    if not sentences:
        raise LmforgeError(f"{p}: no sentences")
    return sentences


def tag_set(sentences: list[Sentence], given: list[str] | None = None) -> list[str]:
    """The tags in logit order: ``given`` (checked against the sentences; it must hold "O", the tag of
    words the model does not see), else the sentences' tags sorted, "O" first."""
    if given:
        if OUTSIDE not in given or not all(is_tag(t) for t in given):
            raise ConfigError(f"task.labels must be BIO tags and include {OUTSIDE!r}, got {given}")
        check_tags(sentences, given)
        return list(given)
    return [OUTSIDE, *sorted({t for s in sentences for t in s.tags} - {OUTSIDE})]


def check_tags(sentences: list[Sentence], labels: list[str]) -> None:
    """Every tag must be one the model can predict."""
    known = set(labels)
    for s in sentences:
        for i, tag in enumerate(s.tags):
            if tag not in known:
                raise LmforgeError(f"{s.line_of(i)}: field 'tag': {tag!r} is not one of the labels {labels}")


def entity_types(labels: Sequence[str]) -> list[str]:
    """The entity types a tag set names (B-PER, I-PER -> PER), sorted."""
    return sorted({t[2:] for t in labels if t != OUTSIDE})


# --- sub-word alignment -----------------------------------------------------------------------------------


def encode_sentences(
    config: TaskConfig, tokenizer: Tokenizer, sentences: list[list[str]], max_len: int
) -> list[tuple[list[int], list[int]]]:
    """(ids, first) per sentence of words: ids framed as ``encode`` frames a text ([CLS] ... [SEP] for
    encoders, ... eos for decoders), at most ``max_len``; ``first[w]`` the position of word w's first
    sub-token, -1 for a word with no token in the window (past the cut, or one the tokenizer drops)."""
    frame = encode(config, tokenizer, [""], max_len)[0]  # the special tokens around an empty text
    start, end = frame[: int(config.encoder)], frame[int(config.encoder) :]
    room = max_len - len(frame)
    rows = []
    for words, (ids, word_ids) in zip(sentences, tokenizer.encode_words(sentences)):
        first = [-1] * len(words)
        for pos, w in enumerate(word_ids[:room]):
            if first[w] < 0:
                first[w] = len(start) + pos
        rows.append((start + ids[:room] + end, first))
    return rows


def word_tags(
    logits: Tensor, first: Tensor, n_words: Sequence[int], labels: Sequence[str]
) -> list[list[str]]:
    """Each word's predicted tag: the argmax of the logits (B, T, n_labels) at its first sub-token
    (``first`` (B, W), -1 where none), "O" for a word without one; row b keeps its ``n_words[b]`` words."""
    best = logits.argmax(dim=-1).gather(1, first.clamp(min=0)).tolist()
    return [
        [labels[i] if f >= 0 else OUTSIDE for i, f in zip(row[:n], firsts[:n])]
        for row, firsts, n in zip(best, first.tolist(), n_words)
    ]


# --- the model's predictions ---------------------------------------------------------------------------


def load_tagger(path: str | Path, device: str = "auto") -> tuple[TaskModel, Tokenizer, int]:
    """A fine-tuned token-classification model (head "token") from its folder or run folder, its
    tokenizer, and the input length it was fine-tuned with."""
    model, tokenizer, max_len = load_classifier(path, device)
    if model.config.head != "token":
        raise LmforgeError(f"{path}: a {model.config.head} head, not a token tagger (fine-tune with ner)")
    return model, tokenizer, max_len


@torch.no_grad()
def predict_tags(
    model: TaskModel, tokenizer: Tokenizer, sentences: list[list[str]], max_len: int, batch_size: int = 32
) -> list[list[str]]:
    """A tag per word of each sentence. Sentences of similar length share a batch (sorted by length,
    then put back in order), so little compute goes to padding."""
    rows = encode_sentences(model.config, tokenizer, sentences, max_len)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    device = next(model.parameters()).device
    tags: list[list[str]] = [[] for _ in rows]
    model.eval()
    for begin in range(0, len(order), batch_size):
        index = order[begin : begin + batch_size]
        ids, valid = pad([rows[i][0] for i in index], tokenizer.pad_id or 0)
        first, _ = pad([rows[i][1] for i in index], -1)
        logits = model(ids.to(device), valid.to(device))
        n_words = [len(sentences[i]) for i in index]
        for i, row_tags in zip(index, word_tags(logits, first.to(device), n_words, model.config.labels)):
            tags[i] = row_tags
    return tags


def ner_report(gold: list[list[str]], pred: list[list[str]], labels: Sequence[str] = ()) -> dict[str, Any]:
    """Entity-level micro precision/recall/F1 and per-type P/R/F1/support (support: gold entities), with
    seqeval's default (conlleval) chunking; token accuracy over words. The types of ``labels`` are
    reported even when no entity of theirs occurs."""
    counts = entity_counts(gold, pred, entity_types(labels))
    total = micro(counts)
    flat_gold, flat_pred = [t for s in gold for t in s], [t for s in pred for t in s]
    return {
        "sentences": len(gold),
        "words": len(flat_gold),
        "precision": total.precision,
        "recall": total.recall,
        "f1": total.f1,
        "token_accuracy": accuracy(flat_gold, flat_pred),
        "per_type": {kind: {**prf(c)._asdict(), "support": c.tp + c.fn} for kind, c in counts.items()},
    }


def evaluate_sentences(
    model: TaskModel, tokenizer: Tokenizer, sentences: list[Sentence], max_len: int, batch_size: int = 32
) -> dict[str, Any]:
    """The NER report of ``model`` on ``sentences`` (tags checked first, for a message naming the line),
    with ``unseen_words``: words past ``max_len`` (or tokenized to nothing), predicted "O"."""
    labels = model.config.labels
    check_tags(sentences, labels)
    words = [s.words for s in sentences]
    pred = predict_tags(model, tokenizer, words, max_len, batch_size)
    report = ner_report([s.tags for s in sentences], pred, labels)
    rows = encode_sentences(model.config, tokenizer, words, max_len)
    return {**report, "unseen_words": sum(f < 0 for _, first in rows for f in first)}


def format_report(report: dict[str, Any]) -> str:
    """The report as a table a terminal shows."""
    width = max(8, *(len(kind) for kind in report["per_type"]))
    lines = [
        f"entity F1 {report['f1']:.4f}  precision {report['precision']:.4f}  recall {report['recall']:.4f}  "
        f"token accuracy {report['token_accuracy']:.4f}  ({report['sentences']} sentences, "
        f"{report['words']} words, {report['unseen_words']} unseen: tagged O)",
        "",
        f"{'type':<{width}}  precision  recall      f1  support",
    ]
    for kind, c in report["per_type"].items():
        lines.append(
            f"{kind:<{width}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:6.4f}  {c['support']:7d}"
        )
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: str | Path, name: str) -> Path:
    """``name``.json in ``out_dir``, written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return out / f"{name}.json"
