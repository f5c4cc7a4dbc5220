"""Which parameters a run trains: all of them, or LoRA adapters only (``lora.rank > 0``), minus the
frozen lowest layers (``optim.freeze_layers``). Applied to every objective's model the same way, at
build time and again for the export, so a checkpoint always matches the model it restores.

With LoRA the export writes the adapters alone (``adapters.safetensors`` beside the model folder: what
``models.lora.load_adapters`` puts back on the base) and then merges W ← W + (α/r)·B A, so the exported
folder is an ordinary model that ``generate``, ``serve`` and ``eval`` load as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from lmforge.atomic import atomic_file
from lmforge.models.lora import adapter_state_dict, apply_lora, merge_lora
from lmforge.train.config import TrainConfig
from lmforge.train.optim import freeze_layers

ADAPTERS = "adapters.safetensors"


def adapt(model: nn.Module, cfg: TrainConfig, fresh: Sequence[str] = ()) -> nn.Module:
    """Wrap and freeze as ``cfg`` asks; ``fresh`` names modules the objective made new (a task head),
    which always train. In place; returns ``model``."""
    lora = cfg.lora
    if lora.rank:
        trainable = [*fresh, *lora.trainable]
        apply_lora(model, lora.targets, lora.rank, lora.alpha, lora.dropout, trainable=trainable)
    freeze_layers(model, cfg.optim.freeze_layers)
    return model


def merge_for_export(model: nn.Module, cfg: TrainConfig, run_dir: Path) -> nn.Module:
    """With LoRA: save the adapters alone in ``run_dir/adapters.safetensors``, then merge them into
    the weights. Without: the model as it is."""
    if not cfg.lora.rank:
        return model
    state = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model).items()}
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(run_dir / ADAPTERS) as tmp:
        save_file(state, str(tmp), metadata={"format": "lmforge-adapters", "rank": str(cfg.lora.rank)})
    return merge_lora(model)
