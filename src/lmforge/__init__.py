"""lmforge: a language model from raw web text to a served, evaluated model, in readable PyTorch.

The Python API mirrors the CLI stages::

    import lmforge
    model, tokenizer = lmforge.load("runs/demo/model")
    print(lmforge.generate(model, tokenizer, "Once upon a time", max_new_tokens=50, temperature=0.8))

Heavy modules (torch) are imported on first use, so ``import lmforge`` and ``lmforge --help`` are fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "load": ("lmforge.models.io", "load_model"),
    "save": ("lmforge.models.io", "save_model"),
    "generate": ("lmforge.infer.generate", "generate"),
    "complete": ("lmforge.infer.generate", "complete"),
    "stream": ("lmforge.infer.generate", "stream_batch"),
    "GenerationConfig": ("lmforge.infer.sampling", "GenerationConfig"),
    "GPT": ("lmforge.models.gpt", "GPT"),
    "GPTConfig": ("lmforge.models.gpt", "GPTConfig"),
    "Tokenizer": ("lmforge.tokenizer.core", "Tokenizer"),
    "load_config": ("lmforge.config", "load_config"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'lmforge' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
