"""What every fine-tuning objective shares (classify, ner, qa): the backbone, the batches, the export.

A task objective reads its train and dev files (``read``), turns examples into model rows
(``features``: token ids plus whatever the loss needs, one ``Features`` per split) and scores them
(``loss``, ``eval_step``, ``val_metrics``). This base does the rest the same way for every task:

- the model: a pretrained lmforge folder's backbone (``task.model``: a converted MiniLM, an
  lmforge-pretrained encoder or decoder) or ``model.backbone`` from random weights (the from-scratch
  baseline) under the task's head, always new and initialised from the run's seed;
- batches as a function of (seed, step): each epoch is a seeded permutation of the train rows whose
  chunks of ``CHUNK`` global batches are sorted by length and cut into batches, then the batches are
  shuffled, so a batch holds rows of similar length and pads each only to its longest;
- validation on the whole dev file at every evaluation, the best by ``task.monitor`` exported when
  ``task.keep_best`` (``out_dir/model`` is then the best dev evaluation's model);
- the export: an lmforge model folder whose config.json records the task settings and dev metrics.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from lmforge.config import ConfigError
from lmforge.errors import LmforgeError
from lmforge.models import registry
from lmforge.models.io import save_model
from lmforge.models.task import TaskConfig, backbone_config, load_backbone
from lmforge.tokenizer.core import Tokenizer
from lmforge.train.causal_lm import round_up
from lmforge.train.config import TrainConfig
from lmforge.train.distributed import DistEnv
from lmforge.train.objective import Batch, Objective

CHUNK = 50  # global batches sorted by length together: similar lengths per batch, order still random


class Features:
    """A split as model rows: ``lengths[i]`` tokens in row i, and ``collate(index)`` the batch of rows
    ``index`` (input_ids, key_valid and the task's targets)."""

    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.lengths)

    def collate(self, index: np.ndarray) -> Batch:
        raise NotImplementedError


class TaskObjective(Objective):
    """Base of the fine-tuning objectives; subclasses set ``head`` and ``metrics`` (the val metrics
    ``task.monitor`` may name, the first the default) and implement ``read``, ``labels``,
    ``features``, ``loss``, ``eval_step`` and ``val_metrics``."""

    head = "sequence"  # the TaskModel head (models/task.py)
    metrics: tuple[str, ...] = ("val_loss",)  # val metrics to monitor, higher is better except val_loss
    fresh = ("head",)  # the head is new: it trains under LoRA and layer freezing too

    # --- what a task defines ---------------------------------------------------------------------------
    def read(self, path: str) -> list[Any]:
        """The labelled examples of one file (errors name file, line and field)."""
        raise NotImplementedError

    def labels(self, train: list[Any]) -> list[str]:
        """The label set in logit order ([] for heads without labels)."""
        return []

    def check_dev(self, dev: list[Any], labels: list[str]) -> None:
        """Raise when a dev example carries what the model cannot predict (e.g. an unknown label)."""

    def features(self, examples: list[Any], train: bool) -> Features:
        """The examples as model rows, tokenized once (``train``: the training split)."""
        raise NotImplementedError

    def task_meta(self) -> dict[str, Any]:
        """Settings the exported folder records for evaluation and prediction (e.g. max_len)."""
        return {"max_len": self.cfg.task.max_len}

    # --- set up ----------------------------------------------------------------------------------------
    def setup(self, cfg: TrainConfig, env: DistEnv) -> TrainConfig:
        self.cfg, t = cfg, cfg.task  # read/labels/check_dev may look at self.cfg.task
        self._check_config(cfg)
        self.tokenizer = Tokenizer.load(t.tokenizer or t.model)
        train = self.read(t.train)
        labels = self.labels(train)
        dev = self.read(t.dev) if t.dev and cfg.eval_batches else []
        self.check_dev(dev, labels)
        self._check_validation(cfg, len(dev), env)
        self.cfg = cfg = dataclasses.replace(cfg, model=self._model_config(cfg, labels))
        self.rank, self.world, self.rows = env.rank, env.world_size, cfg.batch_size * cfg.grad_accum
        self.train, self.dev = self.features(train, True), self.features(dev, False)
        self.steps_per_epoch = len(self.train) // (self.rows * self.world)
        if self.steps_per_epoch == 0:
            raise LmforgeError(f"{t.train}: {len(self.train)} rows, fewer than one global batch")
        monitor = t.monitor or self.metrics[0]
        self.monitor = (monitor, "min" if monitor == "val_loss" else "max")
        self.keep_best = t.keep_best and bool(dev)
        self.last_val: dict[str, float] = {}  # the latest evaluation's metrics, for the export
        self._plan: tuple[int, np.ndarray] | None = None  # (epoch, its batches): the one in use
        return cfg

    def _check_config(self, cfg: TrainConfig) -> None:
        name, t = cfg.objective, cfg.task
        if not isinstance(cfg.model, TaskConfig):
            raise ConfigError(f"objective={name} trains a task model: set model.arch=task")
        if not t.train:
            raise ConfigError(f"objective={name} needs task.train: a file of labelled examples")
        if not (t.model or t.tokenizer):
            raise ConfigError("set task.model (a pretrained model folder) or task.tokenizer (from scratch)")
        if t.monitor and t.monitor not in (*self.metrics, "val_loss"):
            raise ConfigError(f"task.monitor={t.monitor}: objective {name} reports {', '.join(self.metrics)}")

    def _check_validation(self, cfg: TrainConfig, n_dev: int, env: DistEnv) -> None:
        """Early stopping and a val target need dev data; each rank needs a dev example."""
        if not n_dev and (cfg.early_stop_patience or cfg.stop_at_val_loss is not None):
            raise ConfigError("early stopping and stop_at_val_loss need task.dev (and eval_batches > 0)")
        if n_dev and n_dev < env.world_size:
            raise LmforgeError(f"{cfg.task.dev}: {n_dev} examples for {env.world_size} processes")
        if not n_dev and env.is_main:
            print(
                "warning: no validation (no task.dev, or eval_batches=0): the last model is exported",
                file=sys.stderr,
            )

    def _model_config(self, cfg: TrainConfig, labels: list[str]) -> TaskConfig:
        """The task model: the pretrained folder's backbone (or model.backbone with the tokenizer's
        vocabulary) under this task's head for ``labels``."""
        t = cfg.task
        model = dataclasses.replace(cfg.model, head=self.head, labels=labels)
        if t.model:
            backbone = backbone_config(t.model, pooler=model.uses_pooler)
        else:
            vocab = round_up(self.tokenizer.vocab_size, cfg.vocab_multiple)
            backbone = dataclasses.replace(model.backbone, vocab_size=vocab)
            if model.encoder:  # no masked-LM head; no pooler unless the head reads it
                backbone = dataclasses.replace(backbone, mlm_head=False, pooler=model.uses_pooler)
        if self.tokenizer.vocab_size > backbone.vocab_size:
            raise LmforgeError(
                f"the tokenizer has {self.tokenizer.vocab_size} tokens, the backbone {backbone.vocab_size}"
            )
        if t.max_len > backbone.max_seq_len:
            raise ConfigError(
                f"task.max_len ({t.max_len}) exceeds the backbone's context ({backbone.max_seq_len})"
            )
        return dataclasses.replace(model, backbone=backbone)

    def build_model(self) -> nn.Module:
        """The task model, its backbone loaded from task.model when given (the head stays new)."""
        model = registry.build(self.cfg.model)
        if self.cfg.task.model:
            load_backbone(model, self.cfg.task.model)
        return model

    # --- batches -------------------------------------------------------------------------------------
    def _epoch_plan(self, epoch: int) -> np.ndarray:
        """(steps_per_epoch, global batch) row indices of one epoch: a seeded permutation (the
        remainder left for other epochs), length-sorted in chunks, cut into batches, batches shuffled."""
        if self._plan is None or self._plan[0] != epoch:
            rng = np.random.default_rng([self.cfg.seed, epoch])
            size, lengths = self.rows * self.world, self.train.lengths
            order = rng.permutation(len(lengths))[: self.steps_per_epoch * size]
            chunks = [order[i : i + CHUNK * size] for i in range(0, len(order), CHUNK * size)]
            batches = np.concatenate([c[np.argsort(lengths[c], kind="stable")] for c in chunks])
            batches = batches.reshape(self.steps_per_epoch, size)
            self._plan = epoch, batches[rng.permutation(self.steps_per_epoch)]
        return self._plan[1]

    def train_batch(self, step: int) -> Batch:
        epoch, k = divmod(step, self.steps_per_epoch)
        rows = self._epoch_plan(epoch)[k][self.rank * self.rows : (self.rank + 1) * self.rows]
        return self.train.collate(rows)

    def val_batches(self) -> Iterator[Batch]:
        """The whole dev set, sorted by length, dealt round-robin to the ranks."""
        order = np.argsort(self.dev.lengths, kind="stable")[self.rank :: self.world]
        for i in range(0, len(order), self.rows):
            yield self.dev.collate(order[i : i + self.rows])

    def tokens(self, batch: Batch) -> int:
        return int(batch["key_valid"].sum())

    def flops_per_token(self, model: nn.Module) -> float | None:
        return model.flops_per_token(int(self.train.lengths.mean()))

    # --- export --------------------------------------------------------------------------------------
    def export(self, model: nn.Module, out_dir: Path, extra: dict) -> Path:
        """A model folder that ``load_model``, ``lmforge eval`` and ``lmforge predict`` read; its
        config.json also records the task's settings and the dev metrics of the evaluation it comes
        from."""
        task = {"objective": self.cfg.objective, "monitor": self.monitor[0], **self.task_meta()}
        return save_model(model, self.tokenizer, out_dir, extra={**extra, "task": task, "dev": self.last_val})
