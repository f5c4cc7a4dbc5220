"""Device and precision choice, one place for every stage (training, evaluation, generation, serving).

``auto`` means: CUDA when present, else the CPU; bf16 on CUDA, fp32 on the CPU (training also picks
bf16 autocast on CPUs with AMX, where it pays: ``train/fast.py``; without AMX, AVX-512-BF16 alone makes
bf16 matmuls slower than fp32).
"""

from __future__ import annotations

import torch

from lmforge.errors import LmforgeError

DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; anything else as torch spells it (cpu, cuda, cuda:1)."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LmforgeError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "this PyTorch is a CPU build" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise LmforgeError(f"device={name!r} but {why}: use device=cpu (or auto), or run on a GPU machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise LmforgeError(f"device={name!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bf16 on CUDA, fp32 elsewhere; else the named dtype (one of DTYPES)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise LmforgeError(f"unknown dtype {name!r}; expected auto or one of {sorted(DTYPES)}")
    return DTYPES[name]
