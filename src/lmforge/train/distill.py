"""Knowledge distillation: a student learns next tokens from the shards and from a teacher's softened
distribution over them, loss = alpha CE + (1 - alpha) T^2 KL(teacher_T || student_T)
(``losses.distillation``). Everything else is causal-LM training; the val loss stays the plain CE, so
runs with and without a teacher compare."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lmforge.errors import LmforgeError
from lmforge.models.io import load_model
from lmforge.models.losses import cross_entropy, distillation
from lmforge.train.causal_lm import CausalLM
from lmforge.train.config import TrainConfig
from lmforge.train.distributed import DistEnv
from lmforge.train.objective import Batch


class Distill(CausalLM):
    def setup(self, cfg: TrainConfig, env: DistEnv) -> TrainConfig:
        cfg = super().setup(cfg, env)
        self.teacher, tokenizer = load_model(cfg.distill.teacher)
        if tokenizer is None:
            raise LmforgeError(
                f"{cfg.distill.teacher}: the teacher has no tokenizer to check the shards against"
            )
        self.shards.check_tokenizer(tokenizer, "the teacher")
        self.teacher.requires_grad_(False)
        return cfg

    def _teacher_logits(self, ids: Tensor) -> Tensor:
        if self.teacher.lm_head.weight.device != ids.device:
            self.teacher.to(ids.device)
        with torch.no_grad():
            return self.teacher(ids)

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        logits = model(batch["input_ids"])
        vocab = self.shards.vocab_size  # both heads may be padded past it, each its own way
        return distillation(
            logits[..., :vocab],
            self._teacher_logits(batch["input_ids"])[..., :vocab],
            batch["targets"],
            self.cfg.distill.temperature,
            self.cfg.distill.alpha,
        )

    def eval_step(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        return cross_entropy(model(batch["input_ids"]), batch["targets"]), {}
