"""Hugging Face families by config.json ``model_type``: a new family is one adapter module and one line here.

Adapters are imported only when first asked for, like the model families of ``models/registry.py``.
"""

from __future__ import annotations

import importlib
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.hf.adapter import Adapter

_ADAPTERS: dict[str, str] = {
    "bart": "lmforge.hf.bart:BartAdapter",
    "marian": "lmforge.hf.bart:MarianAdapter",
    "bert": "lmforge.hf.bert:BertAdapter",
    "gpt2": "lmforge.hf.gpt2:GPT2Adapter",
    "llama": "lmforge.hf.llama:LlamaAdapter",
}


def model_types() -> list[str]:
    return sorted(_ADAPTERS)


def by_model_type(model_type: str) -> Adapter:
    """The adapter that imports checkpoints with this ``model_type``."""
    if model_type not in _ADAPTERS:
        raise LmforgeError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(model_types())}"
        )
    module, _, name = _ADAPTERS[model_type].partition(":")
    return getattr(importlib.import_module(module), name)()


def for_config(config: Any) -> Adapter:
    """The HF family that expresses an lmforge ``config`` exactly; the error says why each one cannot."""
    candidates = [a for a in map(by_model_type, model_types()) if a.lmforge_arch == config.arch]
    if not candidates:
        raise LmforgeError(f"no Hugging Face family converts lmforge {config.arch!r} models")
    reasons = []
    for a in candidates:
        why = a.export_problem(config)
        if why is None:
            return a
        reasons.append(f"{a.model_type}: {why}")
    raise LmforgeError(f"transformers has no class for this {config.arch!r} model ({'; '.join(reasons)})")
