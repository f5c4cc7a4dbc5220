"""What one Hugging Face model family needs to say so that ``convert`` can import and export it.

An adapter maps the config both ways and lists its tensors as ``Rule``s; one rule list serves both
directions, so import and export cannot drift apart. Reading files, strict checking and writing folders
are ``convert``'s job, written once for every family.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from lmforge.models import registry

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Rule:
    """One lmforge tensor made of one or more HF tensors (several are fused by stacking their rows).

    ``split``: the rows each HF tensor contributes, needed to cut a fused tensor apart on export.
    ``transpose``: HF stores the matrix as (in, out), like GPT-2's Conv1D; lmforge's Linear is (out, in).
    """

    ours: str
    theirs: str | tuple[str, ...]
    split: tuple[int, ...] | None = None
    transpose: bool = False

    def __post_init__(self) -> None:
        if len(self.hf_names) > 1 and (self.split is None or len(self.split) != len(self.hf_names)):
            raise ValueError(f"rule for {self.ours}: fusing {self.hf_names} needs one split size each")

    @property
    def hf_names(self) -> tuple[str, ...]:
        return (self.theirs,) if isinstance(self.theirs, str) else self.theirs

    def from_hf(self, parts: list[torch.Tensor]) -> torch.Tensor:
        if self.transpose:
            parts = [p.t().contiguous() for p in parts]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def to_hf(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        parts = list(tensor.split(self.split)) if self.split else [tensor]
        return [p.t().contiguous() for p in parts] if self.transpose else parts


class Adapter(ABC):
    """One HF ``model_type`` <-> one lmforge architecture."""

    model_type: ClassVar[str]  # config.json "model_type" read and written
    architecture: ClassVar[str]  # the transformers class written to config.json "architectures"
    lmforge_arch: ClassVar[str]  # the lmforge model family (models/registry.py) it converts to

    @abstractmethod
    def config_from_hf(self, cfg: dict[str, Any]) -> Any:
        """The lmforge config; raises LmforgeError naming the HF field it cannot express."""

    @abstractmethod
    def config_to_hf(self, config: Any) -> dict[str, Any]:
        """The family's config.json fields (``convert`` adds architectures, model_type, dtype, tokens)."""

    @abstractmethod
    def export_problem(self, config: Any) -> str | None:
        """Why this HF family cannot express ``config`` exactly, or None when it can."""

    @abstractmethod
    def tensor_rules(self, config: Any) -> list[Rule]:
        """Every lmforge tensor of a model with ``config`` and the HF tensors it corresponds to."""

    def architecture_for(self, config: Any) -> str:
        """The transformers class an export writes (a family with several heads picks by config)."""
        return self.architecture

    def ignored(self, name: str, config: Any) -> bool:
        """HF tensors with no weights of their own (buffers, tied copies): skipped on import."""
        return False

    def normalize_hf_names(self, state: StateDict) -> StateDict:
        """Rename tensors of checkpoint variants (e.g. without a module prefix) to the rules' names."""
        return state

    def new_config(self, **fields: Any) -> Any:
        """A config of this adapter's lmforge family, through the model registry."""
        return registry.config_class(self.lmforge_arch)(**fields)

    def state_from_hf(self, state: StateDict, config: Any) -> StateDict:
        """HF tensors -> lmforge tensors; ``state`` must hold every tensor the rules name."""
        return {r.ours: r.from_hf([state[n] for n in r.hf_names]) for r in self.tensor_rules(config)}

    def state_to_hf(self, state: StateDict, config: Any) -> StateDict:
        """lmforge tensors -> HF tensors; works on meta tensors too, to learn the HF names and shapes."""
        out: StateDict = {}
        for r in self.tensor_rules(config):
            out.update(zip(r.hf_names, r.to_hf(state[r.ours])))
        return out


def mismatches(config: Any, required: dict[str, Any]) -> list[str]:
    """``field=value`` for each field of ``config`` that differs from what a family requires."""
    return [
        f"{k}={getattr(config, k)!r} (needs {v!r})" for k, v in required.items() if getattr(config, k) != v
    ]
