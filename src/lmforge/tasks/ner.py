"""Named-entity recognition (token classification) as an objective of the one loop (``objective: ner``):
fine-tune a token head (``models/task.py``) on CoNLL files of BIO-tagged words. A word's tag is learnt
and predicted at its first sub-token (``evaluate/ner.py``), so the loss is the mean cross-entropy over
those positions; every evaluation tags the whole dev file word by word and reports entity-level micro
precision, recall and F1 with seqeval's default rules. The backbone, batches and export are the
fine-tuning base's (``tasks/base.py``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from lmforge.evaluate.metrics import counts_from_sums, counts_to_sums, entity_counts, micro
from lmforge.evaluate.ner import (
    Sentence,
    check_tags,
    encode_sentences,
    entity_types,
    read_conll,
    tag_set,
    word_tags,
)
from lmforge.models.losses import IGNORE_INDEX, cross_entropy
from lmforge.models.task import pad
from lmforge.tasks.base import Features, TaskObjective
from lmforge.tasks.classify import class_weights
from lmforge.train.config import TrainConfig
from lmforge.train.distributed import DistEnv
from lmforge.train.objective import Batch


class TagRows(Features):
    """Per sentence: token ids, each word's first sub-token position (-1: none) and tag index."""

    def __init__(self, rows: list[tuple[list[int], list[int]]], tags: list[list[int]], pad_id: int):
        self.ids, self.first = [ids for ids, _ in rows], [first for _, first in rows]
        self.tags, self.pad_id = tags, pad_id
        self.lengths = np.array([len(r) for r in self.ids], dtype=np.int64)

    def collate(self, index: np.ndarray) -> Batch:
        """input_ids, key_valid, labels (B, T: the tag index at first sub-tokens, IGNORE_INDEX elsewhere),
        and the word-level first (B, W) and tags (B, W), padded with -1, that the metrics read."""
        input_ids, key_valid = pad([self.ids[i] for i in index], self.pad_id)
        first, _ = pad([self.first[i] for i in index], -1)
        tags, _ = pad([self.tags[i] for i in index], -1)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        row, word = (first >= 0).nonzero(as_tuple=True)
        labels[row, first[row, word]] = tags[row, word]
        return {
            "input_ids": input_ids,
            "key_valid": key_valid,
            "labels": labels,
            "first": first,
            "tags": tags,
        }

    def labelled(self) -> np.ndarray:
        """The tag index of every word the model sees (the class counts of the loss)."""
        return np.array(
            [t for tags, first in zip(self.tags, self.first) for t, f in zip(tags, first) if f >= 0],
            dtype=np.int64,
        )


def token_loss(logits: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
    """sum_i w_{y_i} CE_i / n over the n labelled positions (w = 1 without ``weights``); 0 when n = 0."""
    losses = cross_entropy(logits, labels, reduction="none")  # 0 at IGNORE_INDEX
    if weights is not None:
        losses = losses * weights.to(losses.device)[labels.flatten().clamp(min=0)]
    return losses.sum() / (labels != IGNORE_INDEX).sum().clamp(min=1)


class TagTokens(TaskObjective):
    head = "token"
    metrics = ("val_f1", "val_precision", "val_recall")

    def setup(self, cfg: TrainConfig, env: DistEnv) -> TrainConfig:
        cfg = super().setup(cfg, env)
        self.types = entity_types(cfg.model.labels)
        self.weights = class_weights(self.train.labelled(), len(cfg.model.labels))
        return cfg

    def read(self, path: str) -> list[Sentence]:
        return read_conll(path)

    def labels(self, train: list[Sentence]) -> list[str]:
        return tag_set(train, self.cfg.task.labels)

    def check_dev(self, dev: list[Sentence], labels: list[str]) -> None:
        check_tags(dev, labels)

    def features(self, examples: list[Sentence], train: bool) -> TagRows:
        index = {tag: i for i, tag in enumerate(self.cfg.model.labels)}
        words = [s.words for s in examples]
        rows = encode_sentences(self.cfg.model, self.tokenizer, words, self.cfg.task.max_len)
        tags = [[index[t] for t in s.tags] for s in examples]
        return TagRows(rows, tags, self.tokenizer.pad_id or 0)

    # --- loss and metrics ----------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        """Mean token CE over the labelled positions, each weighted by its tag's ``class_weights`` under
        task.class_weights."""
        weights = self.weights if self.cfg.task.class_weights else None
        return token_loss(model(batch["input_ids"], batch["key_valid"]), batch["labels"], weights)

    def count(self, batch: Batch) -> int:
        return int((batch["labels"] != IGNORE_INDEX).sum())

    def eval_step(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """Unweighted mean CE, and per entity type the tp/fp/fn of the word tags against the gold ones:
        every type of the label set, zeros included, so every rank sends the same keys."""
        logits, names = model(batch["input_ids"], batch["key_valid"]), self.cfg.model.labels
        n_words = (batch["tags"] >= 0).sum(dim=1).tolist()
        pred = word_tags(logits, batch["first"], n_words, names)
        gold = [[names[t] for t in row[:n]] for row, n in zip(batch["tags"].tolist(), n_words)]
        sums = counts_to_sums(entity_counts(gold, pred, self.types))
        return token_loss(logits, batch["labels"]), {k: torch.tensor(v) for k, v in sums.items()}

    def val_metrics(self, val_loss: float, sums: dict[str, float]) -> dict[str, float]:
        precision, recall, f1 = micro(counts_from_sums(sums))
        metrics = {"val_f1": f1, "val_precision": precision, "val_recall": recall}
        self.last_val = {"val_loss": val_loss, **metrics}
        return metrics
