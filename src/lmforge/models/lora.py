"""LoRA (Hu et al., 2021): fine-tune a frozen linear layer W through a low-rank update,

    h = W x + b + (α/r)·B A x,    A: r × in,  B: out × r,  r ≪ min(in, out),

so only r·(in + out) numbers per layer train and travel. B starts at zero (the wrapped model starts as
the base model); A starts random (Kaiming-uniform, as an ``nn.Linear``), so B's first gradient is not
zero. Dropout acts on the LoRA input path only; W x sees the clean input.

Our projections are fused (``attn.qkv`` holds the row blocks [q: H·D, k: G·D, v: G·D], ``mlp.gate_up``
[gate: d_ff, up: d_ff]), so a target may name row blocks: ``attn.qkv:q,v`` puts one (A, B) on the q rows
and one on the v rows and leaves the k rows' effective weight exactly W's. A target is a module-name
pattern matched against the last dotted components of each ``nn.Linear``'s name (``attn.qkv`` matches
``blocks.3.attn.qkv``; fnmatch wildcards allowed), optionally followed by ``:part,part``.

Life cycle: ``apply_lora`` wraps and freezes → train → ``lora_state_dict`` (the adapters alone) and
``load_lora`` onto a fresh base, or ``merge_lora`` (W ← W + (α/r)·B A) for an ordinary model that
``io.save_model`` exports; ``unmerge_lora`` undoes a merge given the adapters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from fnmatch import fnmatchcase
from itertools import accumulate

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.config import ConfigError
from lmforge.errors import LmforgeError
from lmforge.models.io import check_state_dict
from lmforge.models.layers import CrossAttention, MultiHeadAttention, SwiGLU

WHOLE = "all"  # the part name of an adapter over all of a layer's output rows


class LowRank(nn.Module):
    """One update B A: A (r × in) projects down to r dimensions, B (out × r) back up; B = 0 at init."""

    def __init__(self, d_in: int, d_out: int, rank: int, like: Tensor):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, d_in, dtype=like.dtype, device=like.device))
        self.B = nn.Parameter(torch.zeros(d_out, rank, dtype=like.dtype, device=like.device))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        """B A x for rows x (..., in) -> (..., out)."""
        return F.linear(F.linear(x, self.A), self.B)


class LoRALinear(nn.Module):
    """y = W x + b + (α/r)·Σ_p P_p B_p A_p dropout(x): the frozen ``base`` plus one low-rank update per
    part p, where P_p places the part's rows (``rows[p]`` = (start, stop)) in the output, zeros
    elsewhere. An unfused layer has the single part ``all`` covering every row."""

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        rows: dict[str, tuple[int, int]] | None = None,
    ):
        super().__init__()
        if rank <= 0:
            raise ConfigError(f"LoRA rank must be positive, got {rank}")
        self.base = base.requires_grad_(False)
        self.rank, self.out_features = rank, base.out_features
        self.rows = rows or {WHOLE: (0, base.out_features)}
        self.lora = nn.ModuleDict(
            {
                p: LowRank(base.in_features, stop - start, rank, base.weight)
                for p, (start, stop) in self.rows.items()
            }
        )
        self.register_buffer("scaling", torch.tensor(alpha / rank, device=base.weight.device))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scaling * self.delta(self.dropout(x))

    def delta(self, x: Tensor) -> Tensor:
        """Σ_p P_p B_p A_p x: each part's update padded with zeros to the full output width."""
        return sum(
            F.pad(self.lora[p](x), (start, self.out_features - stop))
            for p, (start, stop) in self.rows.items()
        )

    def delta_weight(self) -> Tensor:
        """ΔW = Σ_p P_p B_p A_p (out × in), the matrix ``delta`` multiplies by."""
        return sum(
            F.pad(self.lora[p].B @ self.lora[p].A, (0, 0, start, self.out_features - stop))
            for p, (start, stop) in self.rows.items()
        )

    def extra_repr(self) -> str:
        return f"rank={self.rank}, parts={list(self.rows)}"


def row_blocks(parent: nn.Module, name: str) -> dict[str, int]:
    """The named row blocks, in order, of a fused projection ``parent.<name>``; {} for an unfused one."""
    if isinstance(parent, MultiHeadAttention) and name == "qkv":
        h, g, d = parent.n_head, parent.n_kv_head, parent.head_dim
        return {"q": h * d, "k": g * d, "v": g * d}
    if isinstance(parent, CrossAttention) and name == "kv":
        g, d = parent.n_kv_head, parent.head_dim
        return {"k": g * d, "v": g * d}
    if isinstance(parent, SwiGLU) and name == "gate_up":
        d_ff = parent.gate_up.out_features // 2
        return {"gate": d_ff, "up": d_ff}
    return {}


def part_rows(model: nn.Module, name: str, parts: Sequence[str]) -> dict[str, tuple[int, int]] | None:
    """{part: (start, stop)} for the chosen row blocks of layer ``name``; None for the whole layer."""
    if list(parts) in ([], [WHOLE]):
        return None
    parent_name, _, attr = name.rpartition(".")
    blocks = row_blocks(model.get_submodule(parent_name), attr)
    unknown = sorted(set(parts) - set(blocks))
    if unknown:
        have = f"its parts are {', '.join(blocks)}" if blocks else "it is not a fused projection"
        raise ConfigError(f"LoRA target {name}: no part {', '.join(unknown)} ({have})")
    starts = dict(zip(blocks, accumulate(blocks.values(), initial=0)))
    return {p: (starts[p], starts[p] + blocks[p]) for p in blocks if p in parts}


def matches(name: str, pattern: str) -> bool:
    """Whether ``pattern`` matches the last dotted components of ``name`` (``attn.qkv`` matches
    ``blocks.3.attn.qkv``): a config names a layer of every block without listing the blocks."""
    tail = ".".join(name.split(".")[-(pattern.count(".") + 1) :])
    return fnmatchcase(tail, pattern)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """{module name: wrapper} for every LoRA-wrapped layer of ``model``."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _targeted(model: nn.Module, targets: Sequence[str]) -> dict[str, list[str]]:
    """{linear layer name: parts} for ``targets`` such as ``attn.qkv:q,v``; every target must match."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    chosen: dict[str, list[str]] = {}
    for target in targets:
        pattern, _, parts = target.partition(":")
        hits = [name for name in linears if matches(name, pattern)]
        if not hits:
            raise ConfigError(f"LoRA target {target!r} matches no linear layer of the model")
        for name in hits:
            if name in chosen:
                raise ConfigError(f"LoRA targets {name} twice; name all its parts in one target")
            chosen[name] = [p.strip() for p in parts.split(",") if p.strip()]
    return chosen


def _check_untied(model: nn.Module, names: Sequence[str]) -> None:
    """Refuse a layer whose weight another module shares (a tied output head): merging B A into it
    would change the embedding too."""
    owners: dict[int, list[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(pname)
    for name in names:
        shared = owners[id(model.get_submodule(name).weight)]
        if len(shared) > 1:
            raise ConfigError(f"LoRA target {name}: its weight is tied ({', '.join(shared)})")


def _wrap(model: nn.Module, name: str, layer: nn.Module) -> None:
    """Put ``layer`` where module ``name`` was."""
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, layer)


def apply_lora(
    model: nn.Module,
    targets: Sequence[str],
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    trainable: Sequence[str] = (),
) -> nn.Module:
    """Wrap every targeted linear layer in a ``LoRALinear`` and freeze all else, except parameters
    whose name (or a module above them) matches a ``trainable`` pattern, e.g. a task head. In place;
    returns ``model``."""
    chosen = _targeted(model, targets)
    _check_untied(model, list(chosen))
    for name, parts in chosen.items():
        base = model.get_submodule(name)
        _wrap(model, name, LoRALinear(base, rank, alpha, dropout, part_rows(model, name, parts)))
    adapters = {id(p) for layer in lora_layers(model).values() for p in layer.lora.parameters()}
    for pname, p in model.named_parameters(remove_duplicate=False):
        p.requires_grad_(id(p) in adapters or _kept(pname, trainable))
    return model


def _kept(pname: str, patterns: Sequence[str]) -> bool:
    """Whether a pattern matches parameter ``pname`` or a module above it (``pooler`` keeps
    ``pooler.weight``)."""
    parts = pname.split(".")
    return any(matches(".".join(parts[:i]), pat) for i in range(1, len(parts) + 1) for pat in patterns)


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapters alone: ``<layer>.lora.<part>.A``, ``.B`` and ``<layer>.scaling`` (α/r) per layer."""
    return {
        f"{name}.{key}": t.detach()
        for name, layer in lora_layers(model).items()
        for key, t in layer.state_dict().items()
        if not key.startswith("base.")
    }


def _by_layer(state: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """{layer name: its entries, keyed as in the layer's own state dict} from ``lora_state_dict``."""
    layers: dict[str, dict[str, Tensor]] = {}
    for key, t in state.items():
        found = re.fullmatch(r"(.+)\.(lora\.\w+\.[AB]|scaling)", key)
        if found is None:
            raise LmforgeError(
                f"not a LoRA adapter entry: {key} (expected <layer>.lora.<part>.A/B or .scaling)"
            )
        layers.setdefault(found[1], {})[found[2]] = t
    return layers


def load_lora(model: nn.Module, state: dict[str, Tensor], dropout: float = 0.0) -> nn.Module:
    """Put adapters from ``lora_state_dict`` onto ``model``: layers not yet wrapped are wrapped (rank
    from A, parts from the keys); every entry must fit. Other parameters' ``requires_grad`` is left
    alone. In place; returns ``model``."""
    for name, entries in _by_layer(state).items():
        layer = model.get_submodule(name)
        if not isinstance(layer, LoRALinear):
            parts = sorted({key.split(".")[1] for key in entries if key.startswith("lora.")})
            rank = entries[f"lora.{parts[0]}.A"].size(0)
            scaling = float(entries["scaling"])
            layer = LoRALinear(layer, rank, scaling * rank, dropout, part_rows(model, name, parts))
            _wrap(model, name, layer)
        expected = {k: v for k, v in layer.state_dict().items() if not k.startswith("base.")}
        check_state_dict(expected, entries, f"the LoRA adapters of {name}")
        layer.load_state_dict(entries, strict=False)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """W ← W + (α/r)·ΔW in every wrapped layer, which becomes its plain ``nn.Linear`` again: an
    ordinary model with the original state-dict keys (outputs unchanged up to rounding). Keep
    ``lora_state_dict`` first to ``unmerge_lora`` later. In place; returns ``model``."""
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            layer.base.weight += layer.scaling * layer.delta_weight()
            _wrap(model, name, layer.base)
    return model


def unmerge_lora(model: nn.Module, state: dict[str, Tensor], dropout: float = 0.0) -> nn.Module:
    """Undo ``merge_lora`` with the adapters it merged: wrap again and W ← W − (α/r)·ΔW."""
    names = list(_by_layer(state))
    wrapped = [name for name in names if isinstance(model.get_submodule(name), LoRALinear)]
    if wrapped:
        raise LmforgeError(f"not merged: {', '.join(wrapped)} still carry adapters")
    load_lora(model, state, dropout)
    with torch.no_grad():
        for name in names:
            layer = model.get_submodule(name)
            layer.base.weight -= layer.scaling * layer.delta_weight()
    return model


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """What a LoRA fine-tune changed, alone: the adapters (``lora_state_dict``) and every other
    parameter that trained (e.g. a new task head) — a few hundred KB for a small encoder."""
    adapters = {id(p) for layer in lora_layers(model).values() for p in layer.lora.parameters()}
    others = {
        name: p.detach() for name, p in model.named_parameters() if p.requires_grad and id(p) not in adapters
    }
    return {**lora_state_dict(model), **others}


def load_adapters(model: nn.Module, state: dict[str, Tensor], dropout: float = 0.0) -> nn.Module:
    """Put ``adapter_state_dict`` entries onto a fresh base: the adapters through ``load_lora``, the
    other tensors into the parameters of the same name (each must exist with its shape). In place."""
    params = dict(model.named_parameters())
    lora = {k: v for k, v in state.items() if k not in params}
    plain = {k: v for k, v in state.items() if k in params}
    load_lora(model, lora, dropout)
    check_state_dict({k: params[k] for k in plain}, plain, "the adapters")
    with torch.no_grad():
        for name, t in plain.items():
            params[name].copy_(t)
    return model
