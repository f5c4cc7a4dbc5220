"""Validation: the objective's loss over its fixed val batches, averaged over every counted target on
every rank, and the metrics the objective derives from it and from the sums its ``eval_step`` returns
(perplexity, accuracy, F1 counts, ...)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lmforge.train.distributed import DistEnv, all_reduce_sum
from lmforge.train.objective import Batch, Objective

EvalFn = Callable[[Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def micro_batches(batch: Batch, size: int) -> list[Batch]:
    """Split a batch's rows into consecutive micro-batches of ``size`` rows."""
    rows = len(next(iter(batch.values())))
    return [{k: v[i : i + size] for k, v in batch.items()} for i in range(0, rows, size)]


class Validator:
    def __init__(self, objective: Objective, env: DistEnv, micro_batch: int):
        self.objective, self.env, self.micro_batch = objective, env, micro_batch

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, eval_fn: EvalFn) -> dict[str, float]:
        """{"val_loss": ..., **objective.val_metrics}; empty when the objective has no val data."""
        sums: dict[str, torch.Tensor] = {}
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.env.device)
        count = 0
        model.eval()
        try:
            for batch in self.objective.val_batches():
                for micro in micro_batches(batch, self.micro_batch):
                    n = self.objective.count(micro)
                    loss, extra = eval_fn(micro)
                    loss_sum += loss.double() * n
                    count += n
                    for k, v in extra.items():
                        sums[k] = sums.get(k, 0) + v.double()
        finally:
            model.train()
        names = sorted(sums)
        flat = torch.stack(
            [loss_sum, torch.tensor(float(count), dtype=torch.float64, device=loss_sum.device)]
            + [sums[k].to(loss_sum.device) for k in names]
        )
        loss_sum, count, *values = all_reduce_sum(flat, self.env).tolist()
        if count == 0:
            return {}
        val = loss_sum / count
        return {"val_loss": val, **self.objective.val_metrics(val, dict(zip(names, values)))}
