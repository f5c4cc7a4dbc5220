"""Causal language modelling on token shards: minimise -1/N sum_t log p(x_t | x_<t) (pretraining).

Batches are random windows of ``data.seq_len + 1`` tokens (inputs and next-token targets) drawn by
``WindowSampler`` from an RNG seeded by (seed, step); validation uses the same fixed ``eval_batches``
windows at every evaluation, with the training global batch so the numbers do not depend on world size.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

from torch import Tensor, nn

from lmforge.config import ConfigError
from lmforge.errors import LmforgeError
from lmforge.models.io import read_model_config, save_model
from lmforge.models.losses import perplexity
from lmforge.tokenizer.shards import TokenShards
from lmforge.train.config import TrainConfig
from lmforge.train.data import WindowSampler
from lmforge.train.distributed import DistEnv
from lmforge.train.objective import Batch, Objective, model_to_train


def round_up(n: int, multiple: int) -> int:
    return n if multiple <= 1 else multiple * math.ceil(n / multiple)


class CausalLM(Objective):
    def setup(self, cfg: TrainConfig, env: DistEnv) -> TrainConfig:
        self.shards = TokenShards(cfg.data.shards)
        self.cfg = cfg = dataclasses.replace(cfg, model=self._model_config(cfg))
        world, global_batch = env.world_size, cfg.batch_size * cfg.grad_accum * env.world_size
        seq_len, seed, rank = cfg.data.seq_len, cfg.seed, env.rank
        self.train_data = WindowSampler(self.shards, "train", seq_len, global_batch, seed, rank, world)
        self.val_data = None
        if cfg.eval_batches and self.shards.pieces("val", seq_len):
            self.val_data = WindowSampler(self.shards, "val", seq_len, global_batch, seed, rank, world)
        elif cfg.eval_batches:
            self._no_validation(cfg)
        return cfg

    def _no_validation(self, cfg: TrainConfig) -> None:
        """A val split too short for one window: say so (never skip validation silently); refuse the
        settings that would then never act."""
        where = f"the val split of {self.shards.directory} holds no window of {cfg.data.seq_len + 1} tokens"
        if cfg.early_stop_patience or cfg.stop_at_val_loss is not None:
            raise LmforgeError(
                f"{where}, so early stopping and stop_at_val_loss cannot work; re-shard with "
                "a larger --val-fraction or lower data.seq_len"
            )
        print(
            f"warning: {where}: this run has no validation; re-shard with a larger --val-fraction",
            file=sys.stderr,
        )

    def _model_config(self, cfg: TrainConfig):
        """task.model's config (training continues from that folder: domain adaptation, fine-tuning),
        or model.* with the shards' vocabulary."""
        if not cfg.task.model:
            vocab = round_up(self.shards.vocab_size, cfg.vocab_multiple)
            return dataclasses.replace(cfg.model, vocab_size=vocab)
        model = read_model_config(cfg.task.model)
        if model.arch != "gpt":
            raise ConfigError(f"task.model={cfg.task.model} is a {model.arch} model, not a decoder")
        if self.shards.vocab_size > model.vocab_size:
            raise ConfigError(
                f"{cfg.data.shards} holds ids of {self.shards.vocab_size} tokens, task.model's "
                f"vocabulary has {model.vocab_size}: shard with the model's tokenizer"
            )
        if cfg.data.seq_len > model.max_seq_len:
            raise ConfigError(f"data.seq_len={cfg.data.seq_len} exceeds task.model's {model.max_seq_len}")
        return model

    def build_model(self) -> nn.Module:
        return model_to_train(self.cfg)

    def train_batch(self, step: int) -> Batch:
        x, y = self.train_data.batch(step)
        return {"input_ids": x, "targets": y}

    def val_batches(self):
        if self.val_data is None:
            return
        for k in range(self.cfg.eval_batches):
            x, y = self.val_data.batch(k)
            yield {"input_ids": x, "targets": y}

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        """The mean CE, the output layer fused into it (the full logits are never stored)."""
        return model(batch["input_ids"], targets=batch["targets"])

    def count(self, batch: Batch) -> int:
        return batch["targets"].numel()

    def val_metrics(self, val_loss: float, sums: dict[str, float]) -> dict[str, float]:
        return {"val_ppl": perplexity(val_loss)}

    def flops_per_token(self, model: nn.Module) -> float | None:
        return model.flops_per_token(self.cfg.data.seq_len)

    def export(self, model: nn.Module, out_dir: Path, extra: dict) -> Path:
        return save_model(model, self.shards.tokenizer(), out_dir, extra=extra)
