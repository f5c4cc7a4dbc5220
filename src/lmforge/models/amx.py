"""fp32 linear layers on AMX's bf16 tiles (``kernels/amx.c``): x and w written as sums of bf16 terms.

    bf16x6: x = x0 + x1 + x2, w = w0 + w1 + w2, x w ≈ sum of x_s w_t over s + t <= 2   (fp32's accuracy)
    bf16x3: x = x0 + x1,      w = w0 + w1,      x w ≈ x0 w0 + x0 w1 + x1 w0           (2^-16 of |x w|)

For work bound by fp32 matmuls on many rows at once, without gradients: scoring log-likelihoods, a
prompt's prefill. ``fp32_on_amx(model, precision)`` routes every ``nn.Linear`` of the model through the
kernel while inside; each weight is split and laid out once (``terms`` bf16 values per weight) and kept
on its module until the weight changes. On a CPU without AMX (or without the native build) it does
nothing and PyTorch's fp32 matmul runs.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from lmforge.models.native import library
from lmforge.models.quant import stamp

TERMS = {"bf16x6": 3, "bf16x3": 2}  # precision: bf16 terms per value


def _round32(n: int) -> int:
    return -(-n // 32) * 32


@functools.cache
def _amx():
    """The kernel library with the process allowed to use AMX's tiles, or None."""
    lib = library("amx")
    return lib if lib is not None and lib.lmforge_amx_init() else None


def available() -> bool:
    return _amx() is not None


def pack(weight: Tensor, terms: int) -> Tensor:
    """``weight`` (N, K) fp32 split into ``terms`` bf16 terms and laid out as AMX tiles, followed by the
    number of terms each 16 x 32 tile needs (one where the weights are bf16)."""
    n, k = weight.shape
    tiles, used = _round32(n) * _round32(k) * terms, _round32(n) // 16 * _round32(k) // 32  # (bytes)
    out = torch.empty(tiles + (used + 1) // 2, dtype=torch.int16, device="cpu")
    w = weight.detach().contiguous()
    if not _amx().lmforge_amx_pack(w.data_ptr(), n, k, terms, out.data_ptr(), torch.get_num_threads()):
        raise MemoryError("lmforge_amx_pack: out of memory")
    return out


def linear(x: Tensor, packed: Tensor, terms: int, n: int, bias: Tensor | None) -> Tensor:
    """x (..., K) fp32 times the packed (N, K) weight, plus ``bias``."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    m, k = rows.shape
    y = torch.empty(m, n, dtype=torch.float32, device="cpu")
    terms_of_x = terms * _round32(m) * _round32(k)  # laid out by the kernel (PyTorch aligns to 64 bytes)
    work = torch.empty(terms_of_x, dtype=torch.int16, device="cpu")
    b = bias.detach().contiguous() if bias is not None else None
    _amx().lmforge_amx_linear(
        rows.data_ptr(), m, k, packed.data_ptr(), n, terms, b.data_ptr() if b is not None else None,
        y.data_ptr(), work.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return y.view(*x.shape[:-1], n)


def _forward(module: nn.Linear, terms: int, x: Tensor) -> Tensor:
    w, b = module.weight, module.bias
    if not (x.dtype == w.dtype == torch.float32 and x.device.type == w.device.type == "cpu") or not (
        x.numel() and w.numel()
    ):
        return nn.Linear.forward(module, x)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w, b)):
        return nn.Linear.forward(module, x)
    key = (terms, tuple(w.shape), stamp(w))
    if getattr(module, "_amx", (None,))[0] != key:
        module._amx = (key, pack(w, terms))
    return linear(x, module._amx[1], terms, module.out_features, module.bias)


@contextmanager
def fp32_on_amx(model: nn.Module, precision: str = "bf16x6") -> Iterator[bool]:
    """Inside, every ``nn.Linear`` of ``model`` multiplies on AMX with ``precision`` (see the module's
    docstring); yields whether it does (False: no AMX here, PyTorch's matmul runs). On exit the layers
    are as before and the packed weights are freed."""
    if precision not in TERMS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(TERMS)}")
    layers = [m for m in model.modules() if type(m) is nn.Linear] if available() else []
    for m in layers:
        m.forward = functools.partial(_forward, m, TERMS[precision])
    try:
        yield bool(layers)
    finally:
        for m in layers:
            del m.forward
            m.__dict__.pop("_amx", None)
