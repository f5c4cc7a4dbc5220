"""The fast training settings each machine gets by default, and the line that tells the run log which.

- Precision: ``dtype=auto`` trains under bf16 autocast (fp32 master weights and optimizer) on CUDA and
  on CPUs with AMX, whose bf16 matmuls are several times their fp32 ones; elsewhere in fp32. Under
  CPU autocast, attention at short sequences and narrow heads still runs in fp32, where PyTorch's bf16
  attention backward is the slower one (``models.layers.scaled_dot_product_attention``). On a CPU
  with AVX-512-BF16 but no AMX, bf16 matmuls are *slower* than fp32 (measured on a 2-core Xeon:
  144-147 vs 192-246 GFLOP/s at the GPT-6L/384d shapes), so auto keeps fp32 there.
- The output layer fused into the loss (``models.losses.linear_cross_entropy``): always; the
  objectives call it (a 50k vocabulary's logits and their gradient are never stored).
- Memory: on Linux/glibc CPUs the run keeps freed memory in the process heap (``device.heap_allocator``)
  instead of returning every large block to the OS and faulting it back in, zeroed, at the next step.
- AdamW: PyTorch's fused kernel (``train/optim.py``).
"""

from __future__ import annotations

import torch

from lmforge.device import glibc, pick_dtype
from lmforge.train.optim import fused_adamw


def has_amx() -> bool:
    """Whether this CPU has AMX tiles (Sapphire Rapids and later), where bf16 matmuls pay."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # torch >= 2.13 (torch.cpu, not _C._cpu)
    probe = probe or getattr(torch._C._cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def training_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype of a run: ``auto`` is bf16 on CUDA and on AMX CPUs, fp32 elsewhere; an explicit
    name is taken as it is. (Measured on a 2-core AMX Xeon, a char model's step, fp32 / bf16: 67.5 /
    46.0 ms at 4 layers x 128 dims, 12.4 / 11.9 ms at 2 x 64: narrow models gain less, but lose nothing.)"""
    if name == "auto" and device.type == "cpu" and has_amx():
        return torch.bfloat16
    return pick_dtype(name, device)


def describe(device: torch.device, dtype: torch.dtype, heap: bool, compiled: bool) -> dict:
    """The speed settings a run chose, for its log and ``settings.json``."""
    info = {
        "device": str(device),
        "autocast": None if dtype == torch.float32 else str(dtype).removeprefix("torch."),
        "fused_lm_head_loss": True,
        "fused_adamw": fused_adamw(device),
        "compile": compiled,
    }
    if device.type == "cpu":
        info.update(threads=torch.get_num_threads(), amx=has_amx(), keep_heap=heap and glibc() is not None)
    return info
