"""Text classification as an objective of the one loop (``objective: classify``): fine-tune a task model
(``models/task.py``) to minimise the cross-entropy -1/N sum_i w_{y_i} log p(y_i | x_i) over labelled texts.

The backbone starts from a pretrained lmforge model folder (``task.model``: a converted MiniLM, an
lmforge-pretrained encoder or decoder) or from random weights (``model.backbone``, the from-scratch
baseline); the head is always new, initialised from the run's seed. Texts are tokenized once, with the
model folder's tokenizer (or ``task.tokenizer``), and cut to ``task.max_len`` tokens.

Batches are a function of (seed, step): each epoch is a seeded permutation of the train examples whose
chunks of ``CHUNK`` global batches are sorted by length and cut into batches, then the batches are
shuffled, so a batch holds texts of similar length and pads each only to its longest. Every evaluation
scores the whole dev file (``eval_batches=0``: none) and reports accuracy and macro-F1; with
``task.keep_best`` the loop exports the model at each new best ``task.monitor``, so ``out_dir/model`` is
the best dev evaluation's model.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from lmforge.config import ConfigError
from lmforge.errors import LmforgeError
from lmforge.evaluate.classify import Example, check_labels, label_set, read_examples
from lmforge.evaluate.metrics import class_counts, macro_f1
from lmforge.models import registry
from lmforge.models.io import save_model
from lmforge.models.losses import cross_entropy
from lmforge.models.task import TaskConfig, backbone_config, encode, load_backbone, pad
from lmforge.tokenizer.core import Tokenizer
from lmforge.train.causal_lm import round_up
from lmforge.train.config import TrainConfig
from lmforge.train.distributed import DistEnv
from lmforge.train.objective import Batch, Objective

CHUNK = 50  # global batches sorted by length together: similar lengths per batch, order still random


def class_weights(labels: np.ndarray, k: int) -> Tensor:
    """w_y = n / (k · n_y): every label weighs the same in total, and the mean weight over the n
    examples is 1, so the loss keeps its scale (a label with no example gets weight n / k)."""
    counts = np.bincount(labels, minlength=k)
    return torch.tensor(len(labels) / (k * np.maximum(counts, 1)), dtype=torch.float32)


class Classify(Objective):
    def setup(self, cfg: TrainConfig, env: DistEnv) -> TrainConfig:
        t = cfg.task
        self._check_config(cfg)
        self.tokenizer = Tokenizer.load(t.tokenizer or t.model)
        train = read_examples(t.train, t.text_field, t.label_field)
        labels = label_set(train, t.labels)
        dev = read_examples(t.dev, t.text_field, t.label_field) if t.dev and cfg.eval_batches else []
        check_labels(dev, labels, t.label_field)
        self._check_validation(cfg, dev, env)
        self.cfg = cfg = dataclasses.replace(cfg, model=self._model_config(cfg, labels))
        self.rank, self.world, self.rows = env.rank, env.world_size, cfg.batch_size * cfg.grad_accum
        self.train_ids, self.train_labels = self._encode(train, labels)
        self.dev_ids, self.dev_labels = self._encode(dev, labels)
        self.lengths = np.array([len(r) for r in self.train_ids])
        self.steps_per_epoch = len(train) // (self.rows * self.world)
        if self.steps_per_epoch == 0:
            raise LmforgeError(f"{t.train}: {len(train)} examples, fewer than one global batch")
        self.weights = class_weights(self.train_labels, len(labels))
        self.monitor = (t.monitor, "min" if t.monitor == "val_loss" else "max")
        self.keep_best = t.keep_best and bool(dev)
        self.last_val: dict[str, float] = {}  # the latest evaluation's metrics, for the export
        self._plan: tuple[int, np.ndarray] | None = None  # (epoch, its batches): the one in use
        return cfg

    def _check_config(self, cfg: TrainConfig) -> None:
        if not isinstance(cfg.model, TaskConfig):
            raise ConfigError("objective=classify trains a task model: set model.arch=task")
        if not cfg.task.train:
            raise ConfigError("objective=classify needs task.train: a labelled .tsv, .csv or .jsonl file")
        if not (cfg.task.model or cfg.task.tokenizer):
            raise ConfigError("set task.model (a pretrained model folder) or task.tokenizer (from scratch)")

    def _check_validation(self, cfg: TrainConfig, dev: list[Example], env: DistEnv) -> None:
        """Early stopping and a val target need dev data; each rank needs a dev example."""
        if not dev and (cfg.early_stop_patience or cfg.stop_at_val_loss is not None):
            raise ConfigError("early stopping and stop_at_val_loss need task.dev (and eval_batches > 0)")
        if dev and len(dev) < env.world_size:
            raise LmforgeError(f"{cfg.task.dev}: {len(dev)} examples for {env.world_size} processes")
        if not dev and env.is_main:
            print(
                "warning: no validation (no task.dev, or eval_batches=0): the last model is exported",
                file=sys.stderr,
            )

    def _model_config(self, cfg: TrainConfig, labels: list[str]) -> TaskConfig:
        """The task model: the pretrained folder's backbone (or model.backbone with the tokenizer's
        vocabulary) under a head for ``labels``."""
        t, model = cfg.task, cfg.model
        if t.model:
            backbone = backbone_config(t.model, model.pooling)
        else:
            vocab = round_up(self.tokenizer.vocab_size, cfg.vocab_multiple)
            backbone = dataclasses.replace(model.backbone, vocab_size=vocab)
        if self.tokenizer.vocab_size > backbone.vocab_size:
            raise LmforgeError(
                f"the tokenizer has {self.tokenizer.vocab_size} tokens, the backbone {backbone.vocab_size}"
            )
        if t.max_len > backbone.max_seq_len:
            raise ConfigError(
                f"task.max_len ({t.max_len}) exceeds the backbone's context ({backbone.max_seq_len})"
            )
        return dataclasses.replace(model, backbone=backbone, labels=labels)

    def _encode(self, examples: list[Example], labels: list[str]) -> tuple[list[list[int]], np.ndarray]:
        index = {label: i for i, label in enumerate(labels)}
        ids = encode(self.cfg.model, self.tokenizer, [e.text for e in examples], self.cfg.task.max_len)
        return ids, np.array([index[e.label] for e in examples], dtype=np.int64)

    def build_model(self) -> nn.Module:
        """The task model, its backbone loaded from task.model when given (the head stays new). LoRA
        plugs in here: ``apply_lora(model, targets, rank, alpha, dropout, keep_trainable=["head.*"])``
        on the loaded model, and a merge before ``export``."""
        model = registry.build(self.cfg.model)
        if self.cfg.task.model:
            load_backbone(model, self.cfg.task.model)
        return model

    # --- batches -------------------------------------------------------------------------------------
    def _epoch_plan(self, epoch: int) -> np.ndarray:
        """(steps_per_epoch, global batch) example indices of one epoch: a seeded permutation (the
        remainder left for other epochs), length-sorted in chunks, cut into batches, batches shuffled."""
        if self._plan is None or self._plan[0] != epoch:
            rng = np.random.default_rng([self.cfg.seed, epoch])
            size = self.rows * self.world
            order = rng.permutation(len(self.lengths))[: self.steps_per_epoch * size]
            chunks = [order[i : i + CHUNK * size] for i in range(0, len(order), CHUNK * size)]
            batches = np.concatenate([c[np.argsort(self.lengths[c], kind="stable")] for c in chunks])
            batches = batches.reshape(self.steps_per_epoch, size)
            self._plan = epoch, batches[rng.permutation(self.steps_per_epoch)]
        return self._plan[1]

    def _batch(self, ids: list[list[int]], labels: np.ndarray, index: np.ndarray) -> Batch:
        input_ids, key_valid = pad([ids[i] for i in index], self.tokenizer.pad_id or 0)
        return {"input_ids": input_ids, "key_valid": key_valid, "label": torch.from_numpy(labels[index])}

    def train_batch(self, step: int) -> Batch:
        epoch, k = divmod(step, self.steps_per_epoch)
        rows = self._epoch_plan(epoch)[k][self.rank * self.rows : (self.rank + 1) * self.rows]
        return self._batch(self.train_ids, self.train_labels, rows)

    def val_batches(self) -> Iterator[Batch]:
        """The whole dev set, sorted by length, dealt round-robin to the ranks."""
        order = np.argsort([len(r) for r in self.dev_ids], kind="stable")[self.rank :: self.world]
        for i in range(0, len(order), self.rows):
            yield self._batch(self.dev_ids, self.dev_labels, order[i : i + self.rows])

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

    def tokens(self, batch: Batch) -> int:
        return int(batch["key_valid"].sum())

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

    def flops_per_token(self, model: nn.Module) -> float | None:
        return model.flops_per_token(int(self.lengths.mean()))

    def export(self, model: nn.Module, out_dir: Path, extra: dict) -> Path:
        """A model folder that ``load_model``, ``lmforge eval classify`` and ``lmforge predict`` read; its
        config.json also records the input length and the dev metrics of the evaluation it comes from."""
        task = {"max_len": self.cfg.task.max_len, "monitor": self.cfg.task.monitor}
        return save_model(model, self.tokenizer, out_dir, extra={**extra, "task": task, "dev": self.last_val})
