"""Text classification as an objective of the one loop (``objective: classify``): fine-tune a sequence
head (``models/task.py``) to minimise the cross-entropy -1/N sum_i w_{y_i} log p(y_i | x_i) over
labelled texts. Texts are tokenized once, with the model folder's tokenizer (or ``task.tokenizer``), and
cut to ``task.max_len`` tokens; every evaluation scores the whole dev file and reports accuracy and
macro-F1. The backbone, batches and export are the fine-tuning base's (``tasks/base.py``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from lmforge.evaluate.classify import Example, check_labels, label_set, read_examples
from lmforge.evaluate.metrics import class_counts, macro_f1
from lmforge.models.losses import cross_entropy
from lmforge.models.task import encode, pad
from lmforge.tasks.base import Features, TaskObjective
from lmforge.train.config import TrainConfig
from lmforge.train.distributed import DistEnv
from lmforge.train.objective import Batch


def class_weights(labels: np.ndarray, k: int) -> Tensor:
    """w_y = n / (k · n_y): every label weighs the same in total, and the mean weight over the n
    examples is 1, so the loss keeps its scale (a label with no example gets weight n / k)."""
    counts = np.bincount(labels, minlength=k)
    return torch.tensor(len(labels) / (k * np.maximum(counts, 1)), dtype=torch.float32)


class TextRows(Features):
    """Token ids and label index of each text."""

    def __init__(self, ids: list[list[int]], labels: np.ndarray, pad_id: int):
        self.ids, self.labels, self.pad_id = ids, labels, pad_id
        self.lengths = np.array([len(r) for r in ids], dtype=np.int64)

    def collate(self, index: np.ndarray) -> Batch:
        input_ids, key_valid = pad([self.ids[i] for i in index], self.pad_id)
        return {"input_ids": input_ids, "key_valid": key_valid, "label": torch.from_numpy(self.labels[index])}


class Classify(TaskObjective):
    head = "sequence"
    metrics = ("val_acc", "val_macro_f1")

    def setup(self, cfg: TrainConfig, env: DistEnv) -> TrainConfig:
        cfg = super().setup(cfg, env)
        self.weights = class_weights(self.train.labels, len(cfg.model.labels))
        return cfg

    def read(self, path: str) -> list[Example]:
        return read_examples(path, self.cfg.task.text_field, self.cfg.task.label_field)

    def labels(self, train: list[Example]) -> list[str]:
        return label_set(train, self.cfg.task.labels)

    def check_dev(self, dev: list[Example], labels: list[str]) -> None:
        check_labels(dev, labels, self.cfg.task.label_field)

    def features(self, examples: list[Example], train: bool) -> TextRows:
        index = {label: i for i, label in enumerate(self.cfg.model.labels)}
        ids = encode(self.cfg.model, self.tokenizer, [e.text for e in examples], self.cfg.task.max_len)
        labels = np.array([index[e.label] for e in examples], dtype=np.int64)
        return TextRows(ids, labels, self.tokenizer.pad_id or 0)

    # --- loss and metrics ----------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        """Mean over rows of w_y · CE, w_y from ``class_weights`` with task.class_weights, else 1."""
        losses = cross_entropy(
            model(batch["input_ids"], batch["key_valid"]), batch["label"], reduction="none"
        )
        if self.cfg.task.class_weights:
            losses = losses * self.weights.to(losses.device)[batch["label"]]
        return losses.mean()

    def count(self, batch: Batch) -> int:
        return len(batch["label"])

    def eval_step(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """Unweighted mean CE, and the counts accuracy and the confusion matrix add up from: one key per
        (gold, predicted) pair, zeros included, so every rank sends the same keys."""
        logits, gold = model(batch["input_ids"], batch["key_valid"]), batch["label"]
        pred = logits.argmax(dim=-1)
        k = len(self.cfg.model.labels)
        cells = torch.bincount(gold * k + pred, minlength=k * k)
        sums = {f"confusion/{i}/{j}": cells[i * k + j] for i in range(k) for j in range(k)}
        sums |= {"correct": (pred == gold).sum(), "total": torch.tensor(len(gold))}
        return cross_entropy(logits, gold), sums

    def val_metrics(self, val_loss: float, sums: dict[str, float]) -> dict[str, float]:
        labels = self.cfg.model.labels
        k = len(labels)
        matrix = [[round(sums[f"confusion/{i}/{j}"]) for j in range(k)] for i in range(k)]
        metrics = {
            "val_acc": sums["correct"] / max(sums["total"], 1),
            "val_macro_f1": macro_f1(class_counts(matrix, labels)),
        }
        self.last_val = {"val_loss": val_loss, **metrics}
        return metrics
