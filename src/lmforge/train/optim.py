"""AdamW with decoupled weight decay on matrices only, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
from torch import nn

from lmforge.train.config import TrainConfig

# Embedding tables are lookups, not linear maps: decaying them just shrinks rare tokens' vectors.
NO_DECAY_MODULES = (nn.Embedding, nn.LayerNorm)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weight matrices (decayed) and norms, biases, embeddings (not decayed).

    A tied output head is the embedding tensor itself, so it is counted once, in the no-decay group.
    """
    no_decay_ids = set()
    for module in model.modules():
        if isinstance(module, NO_DECAY_MODULES) or "norm" in type(module).__name__.lower():
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if id(p) in no_decay_ids or p.dim() < 2 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; the fused CUDA kernel (one launch for all parameters) when the device supports it."""
    o = cfg.optim
    kwargs = {}
    if device.type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters:
        kwargs["fused"] = True
    return torch.optim.AdamW(
        param_groups(model, o.weight_decay), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, **kwargs
    )


def lr_factor(step: int, cfg: TrainConfig, horizon: int | None = None) -> float:
    """lr(step) / peak lr: linear warmup over ``warmup_steps``, then cosine down to ``min_lr`` at
    ``horizon`` steps (default ``decay_steps``, else ``max_steps``; a time-budgeted run re-plans it)."""
    o = cfg.optim
    total = horizon or o.decay_steps or cfg.max_steps
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
    min_lr = o.lr / 10 if o.min_lr is None else o.min_lr
    floor = min_lr / o.lr if o.lr else 0.0
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, horizon: Callable[[], int | None] = lambda: None
) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule as a LambdaLR; ``horizon()`` gives the planned length when the run re-plans it."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, horizon()))


def set_peak_lr(optimizer: torch.optim.Optimizer, scheduler, cfg: TrainConfig, step: int) -> None:
    """Make ``cfg.optim.lr`` the schedule's peak from ``step`` on (a resumed run may change it)."""
    peak = cfg.optim.lr
    scheduler.base_lrs = [peak] * len(optimizer.param_groups)
    factor = scheduler.lr_lambdas[0](step)
    for group in optimizer.param_groups:
        group["initial_lr"], group["lr"] = peak, peak * factor
