"""Data parallelism under ``torchrun``: process group, model wrapping (DDP or FSDP), full state dicts.

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything here degrades to one process.
Checkpoints and exports always hold *full* (unsharded) tensors on rank 0, so a run trained with FSDP on
8 GPUs resumes on one CPU and vice versa.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from lmforge.device import pick_device
from lmforge.models.layers import Block


@dataclass
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str) -> DistEnv:
    """Join the torchrun process group (NCCL on CUDA, gloo on CPU), or run as a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank, local_rank, world, device)


def all_reduce_mean(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.distributed:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= env.world_size
    return value


def all_reduce_sum(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.distributed:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def broadcast_value(value: float, env: DistEnv) -> float:
    """Rank 0's ``value`` on every rank (e.g. elapsed time: one clock decides)."""
    if not env.distributed:
        return value
    t = torch.tensor(value, dtype=torch.float64, device=env.device)
    dist.broadcast(t, src=0)
    return t.item()


def broadcast_flag(flag: bool, env: DistEnv) -> bool:
    """Rank 0's ``flag`` on every rank (e.g. "out of time", decided by one clock)."""
    return bool(broadcast_value(float(flag), env))


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every rank when ``flag`` is true on at least one."""
    if not env.distributed:
        return flag
    t = torch.tensor(float(flag), device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def shutdown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, env: DistEnv, parallel: str) -> nn.Module:
    """DDP (a full replica per process, gradients all-reduced) or FSDP (each Transformer block's
    parameters, gradients and optimizer state sharded across processes, gathered just in time); any
    model built from ``layers.Block`` shards the same way."""
    if not env.distributed:
        return model
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for module in model.modules():
            if isinstance(module, Block):
                fully_shard(module)
        return fully_shard(model)  # the root holds the rest: embeddings (tied or not), norms, heads
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)


def no_grad_sync(model: nn.Module, skip: bool) -> AbstractContextManager:
    """Skip the gradient all-reduce on accumulation micro-steps (only the last one synchronises)."""
    if skip and hasattr(model, "no_sync"):
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(not skip)
    return nullcontext()


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimizer state dicts on the CPU (collective: every rank must call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(model, optimizer, options=options)


def load_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict, optim_sd: dict
) -> None:
    """Inverse of ``full_state``: every rank passes the full dicts and keeps its own shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd, options=options)
