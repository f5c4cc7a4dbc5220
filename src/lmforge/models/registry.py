"""Model families by name: a model folder's ``config.json`` and a training config's ``model.arch`` name
one, and the registry builds it. A new family (an encoder, an encoder-decoder) is one entry here.

Each family is a module with an ``nn.Module`` class whose ``config_class`` is its config dataclass; that
dataclass has an ``arch`` field holding the family's name, so configs of different families never mix.
Built-in families are imported only when first asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from lmforge.config import from_dict
from lmforge.errors import LmforgeError

_FAMILIES: dict[str, str] = {
    "gpt": "lmforge.models.gpt:GPT",
    "bert": "lmforge.models.bert:Bert",
    "seq2seq": "lmforge.models.seq2seq:Seq2Seq",
    "task": "lmforge.models.task:TaskModel",  # a backbone (gpt or bert) with a task head
}


def register(arch: str, model_class: type[nn.Module] | str) -> None:
    """Add a family: ``model_class`` (or ``"module:Class"``) with a ``config_class`` attribute."""
    if isinstance(model_class, type):
        model_class = f"{model_class.__module__}:{model_class.__qualname__}"
    _FAMILIES[arch] = model_class


def names() -> list[str]:
    return sorted(_FAMILIES)


def model_class(arch: str) -> type[nn.Module]:
    if arch not in _FAMILIES:
        raise LmforgeError(f"unknown model architecture {arch!r}; known: {', '.join(names())}")
    module, _, name = _FAMILIES[arch].partition(":")
    return getattr(importlib.import_module(module), name)


def config_class(arch: str) -> type:
    return model_class(arch).config_class


def build(config: Any) -> nn.Module:
    """The model that ``config`` describes (its family from ``config.arch``)."""
    return model_class(config.arch)(config)


def config_from_dict(data: dict[str, Any], where: str = "model") -> Any:
    """The typed config of the family ``data["arch"]`` names (``gpt`` when absent: older folders)."""
    return from_dict(config_class(data.get("arch", "gpt")), data, where)
