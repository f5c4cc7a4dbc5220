"""Device and precision choice, and the CPU heap setting, one place for every stage (training,
evaluation, generation, serving).

``auto`` means: CUDA when present, else the CPU; bf16 on CUDA, fp32 on the CPU (training also picks
bf16 autocast on CPUs with AMX, where it pays: ``train/fast.py``; without AMX, AVX-512-BF16 alone makes
bf16 matmuls slower than fp32).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from contextlib import contextmanager

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


# glibc's mallopt parameters and defaults (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536


def glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has ``mallopt`` and ``malloc_trim``), else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


@contextmanager
def heap_allocator(enabled: bool = True) -> Iterator[bool]:
    """Within the block, glibc serves large blocks from the heap and keeps what is freed, so each
    training step (or evaluation batch) reuses the previous one's memory. By default every block above
    32 MiB (a 50k vocabulary's logits, its embedding gradient) is a fresh ``mmap``: the kernel zeroes it
    page by page on first touch, step after step. Yields whether the setting is on (glibc only); on exit
    the defaults return and the kept memory goes back to the OS."""
    libc = glibc() if enabled else None
    if libc is None:
        yield False
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # an int: 2 GiB, never reached at a step's end
    try:
        yield True
    finally:
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)
