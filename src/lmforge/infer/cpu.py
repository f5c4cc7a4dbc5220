"""Faster CPU decoding: the model's linear layers with weights laid out once, ahead of time.

At decode time every step multiplies a handful of rows by every weight matrix, so the step is as fast as
the matmul kernel streams weights from memory. ``F.linear`` on a plain bf16 weight reaches about a third
of what this CPU's memory allows; the same product on a pre-packed weight (oneDNN's blocked layout,
what ``torch.compile``'s CPU backend uses with frozen weights) is 2-3x faster and gives the same bits.
For fp32 packing pays from about 4 rows (batch 8: 2x); below that the plain kernel is as fast. A small
fp32 matrix is kept as a contiguous W^T instead, for MKL's addmm, faster still at a few rows
(``SMALL_FP32``).
The packed copy shares every other tensor with the model and is rebuilt when the weights change, as
their version counters tell; PyTorch's fused AdamW updates weights without bumping them, so a model that
is still training must not be packed (``Seq2SeqStepper(pack=False)``).
"""

from __future__ import annotations

import copy
import weakref

import torch
from torch import Tensor, nn

ENGINES_KEY = "_decode_engines"  # where infer.engine caches a model's fixed-shape decode steps


# fp32 weights up to this many elements (4 MiB, one core's L2 here) multiply faster as a contiguous W^T
# through MKL's addmm: at 5-40 rows 1.2-2x oneDNN's blocked layout and 1.3-1.8x F.linear on a 2-core
# Xeon (no AMX); larger ones (an LM head) stream from memory at least as fast in oneDNN's layout.
SMALL_FP32 = 1 << 20


class PackedLinear(nn.Module):
    """``y = x W^T + b`` with W laid out once for decoding (for inference only: no gradient flows):
    oneDNN's blocked layout, or for a small fp32 W a contiguous W^T for ``addmm``."""

    def __init__(self, linear: nn.Linear, rows_hint: int):
        super().__init__()
        weight = linear.weight.detach()
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.transposed = weight.dtype == torch.float32 and weight.numel() <= SMALL_FP32
        if self.transposed:
            self.packed = weight.t().contiguous()
        else:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows_hint)

    def forward(self, x: Tensor) -> Tensor:
        if not self.transposed:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        rows = x.reshape(-1, x.size(-1))
        y = rows @ self.packed if self.bias is None else torch.addmm(self.bias, rows, self.packed)
        return y.view(*x.shape[:-1], y.size(-1))


def packing_rows(model: nn.Module) -> int | None:
    """From how many rows per forward a packed copy is faster: bf16 from 1 (when the CPU has bf16
    kernels), fp32 from 4; None when never: not on a CPU, no oneDNN, a model in training mode, or one
    with forward hooks, which a copy would not honour."""
    weight = model.lm_head.weight
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available() or model.training:
        return None
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        return None  # a copy would bypass the hooks (they must see every decode step)
    if weight.dtype == torch.bfloat16:
        return 1 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    return 4 if weight.dtype == torch.float32 else None


def _weights_version(model: nn.Module) -> tuple:
    return tuple((id(p), p._version, p.dtype) for p in model.parameters())


# model -> (weights version, packed copy); kept beside the model, not on it, so the model stays an
# ordinary module (deepcopy, pickling and state_dict never meet oneDNN's opaque tensors)
_PACKED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, nn.Module | None]] = weakref.WeakKeyDictionary()


def packed_for_decode(model: nn.Module, batch: int) -> nn.Module:
    """A copy of ``model`` (a decoder or an encoder-decoder: anything with an ``lm_head``) whose
    ``nn.Linear`` layers are ``PackedLinear`` (cached per model)."""
    version = _weights_version(model)
    cached = _PACKED.pop(model, None)
    if cached is not None and cached[0] == version:
        _PACKED[model] = cached
        return cached[1] or model
    engines = model.__dict__.pop(ENGINES_KEY, None)  # caches that the copy must not duplicate
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    try:
        twin = copy.deepcopy(model, memo=shared)
    finally:
        if engines is not None:
            model.__dict__[ENGINES_KEY] = engines
    try:
        for module in list(twin.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(module, name, PackedLinear(child, batch))
    except RuntimeError:  # a oneDNN build without this layout for this CPU: decode with the plain model
        twin = model
    _PACKED[model] = (version, None if twin is model else twin)  # never the model itself: a weak key
    return twin
