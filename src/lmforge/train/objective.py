"""The objective seam: what the one training loop trains, as a small protocol.

The loop (``train/trainer.py``) owns everything that is the same for every task: distributed wrapping,
gradient accumulation, clipping, the optimizer and schedule, validation, logging, checkpoints and the stop
policy. An objective owns what differs: the model it trains, its batches, its loss, its extra validation
metrics and how the trained model is saved. Causal-LM pretraining is one objective (``train/causal_lm.py``);
masked-LM, classification, QA, translation and instruction tuning are others, never a second loop.

A batch is a dict of tensors whose first dimension is the row; the loop slices rows into micro-batches
and moves them to the device. ``train_batch(step)`` must depend on (seed, step) only, never on what came
before, so the whole data state of a run is its step number and resume is exact.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from torch import Tensor, nn

from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    from lmforge.train.config import TrainConfig
    from lmforge.train.distributed import DistEnv

Batch = dict[str, Tensor]


class Objective:
    """Base class of objectives; override what your task needs (the defaults suit most)."""

    # The val metric that decides which evaluation is best (early stopping counts the evaluations since
    # it), and whether lower ("min") or higher ("max") is better.
    monitor: tuple[str, Literal["min", "max"]] = ("val_loss", "min")
    # True: the loop exports the model at each new best evaluation, so the exported model is the best
    # one by ``monitor`` rather than the last (fine-tuning on a small dev set).
    keep_best: bool = False
    # Modules the objective makes new rather than loading pretrained (a task head): they train even
    # when LoRA (``lora.rank``) or ``optim.freeze_layers`` freeze the rest.
    fresh: tuple[str, ...] = ()

    def setup(self, cfg: TrainConfig, env: DistEnv) -> TrainConfig:
        """Open the data for this rank and return the config with what the data decides filled in
        (e.g. the vocabulary size); called once, before the model is built."""
        return cfg

    def build_model(self) -> nn.Module:
        """The model to train, freshly initialised (the loop seeds the RNG first)."""
        raise NotImplementedError

    def train_batch(self, step: int) -> Batch:
        """This rank's rows of global batch ``step`` (a function of the seed and ``step`` only)."""
        raise NotImplementedError

    def val_batches(self) -> Iterable[Batch]:
        """This rank's rows of the fixed validation batches (the same ones at every evaluation)."""
        return ()

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        """Mean loss over the batch's counted targets (call ``model``, the wrapped one, not its parts)."""
        raise NotImplementedError

    def count(self, batch: Batch) -> int:
        """How many targets the loss of ``batch`` averages over; micro-batches are weighted by it."""
        return len(next(iter(batch.values())))

    def tokens(self, batch: Batch) -> int:
        """Input tokens in ``batch``, for throughput (default: the elements of ``input_ids``)."""
        return batch["input_ids"].numel() if "input_ids" in batch else self.count(batch)

    def eval_step(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of a val micro-batch and the sums a metric needs (e.g. {"correct": .., "total": ..},
        true/false positives, n-gram matches), which the loop adds up over batches and ranks."""
        return self.loss(model, batch), {}

    def val_metrics(self, val_loss: float, sums: dict[str, float]) -> dict[str, float]:
        """Metrics from the val loss and the summed ``eval_step`` outputs (e.g. perplexity, accuracy)."""
        return {}

    def flops_per_token(self, model: nn.Module) -> float | None:
        """Training FLOPs per token, for MFU; None where unknown."""
        return None

    def export(self, model: nn.Module, out_dir: Path, extra: dict) -> Path | None:
        """Save the trained model for the next stage (e.g. an lmforge model folder); None: nothing."""
        return None


def model_to_train(cfg: TrainConfig) -> nn.Module:
    """``task.model``'s model with its weights (training continues from a model folder), or a new
    ``cfg.model``: what an objective without a new head builds."""
    from lmforge.models import registry
    from lmforge.models.io import load_model

    if cfg.task.model:
        return load_model(cfg.task.model)[0].train()
    return registry.build(cfg.model)


_OBJECTIVES = {
    "causal_lm": "lmforge.train.causal_lm:CausalLM",
    "distill": "lmforge.train.distill:Distill",
    "mlm": "lmforge.train.masked_lm:MaskedLM",
    "classify": "lmforge.tasks.classify:Classify",
    "ner": "lmforge.tasks.ner:TagTokens",
    "qa": "lmforge.tasks.qa:ExtractSpans",
    "translate": "lmforge.tasks.seq2seq:Translate",
    "summarize": "lmforge.tasks.seq2seq:Summarize",
    "instruct": "lmforge.tasks.instruct:Instruct",
}


def build_objective(name: str) -> Objective:
    """A registered objective by name, or any ``package.module:Class`` import path."""
    target = _OBJECTIVES.get(name, name)
    module, _, attr = target.partition(":")
    if not attr:
        raise LmforgeError(
            f"objective {name!r}: not one of {sorted(_OBJECTIVES)} nor a 'package.module:Class' path"
        )
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise LmforgeError(f"objective {name!r}: cannot import {target} ({e})") from None
    return cls()
