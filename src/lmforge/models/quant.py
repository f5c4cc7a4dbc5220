"""Weight-only quantization: linear layers whose weights are stored as 8- or 4-bit integers and scales.

The round trip of a weight w within its group (int8: a whole output row; int4: ``group`` consecutive
inputs of a row), as ``quantize_int8`` / ``quantize_int4`` write it:

    int8, symmetric:   s = max|w| / 127            q = clamp(round(w / s), -127, 127)    ŵ = q s
    int4, symmetric:   s = a max|w| / 7            q = clamp(round(w / s), -8, 7)        ŵ = q s
                       (a in [0.5, 1]: the least squared error sum (w - ŵ)^2 of the group)
    int4, asymmetric:  s = (max w - min w) / 15    q = clamp(round((w - min w) / s), 0, 15)
                                                                                        ŵ = q s + min w

so |w - ŵ| <= s / 2 for every weight within the grid's range, which is all of them except the few a
symmetric scale search clips (the asymmetric grid spends all 16 levels on [min w, max w]).
A decode step (at most ``KERNEL_ROWS`` rows) multiplies on the integers, never a dequantized matrix:
PyTorch's CPU kernels ``_weight_int8pack_mm`` and ``_weight_int4pack_mm_for_cpu``, fed bf16 activations
(their fp32 path is several times slower than a float matmul on a Xeon without AMX; with bf16 they
beat it 2-4x at 1-8 rows). Longer inputs (prefill, scoring a text) are compute-bound: there the weights
are dequantized once per call and multiplied in the input's dtype. Other devices always dequantize.
The head and the embeddings stay float: in most small models the head is the embedding matrix (tied),
and its errors go straight into the logits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.config import ConfigError
from lmforge.errors import LmforgeError

KERNEL_ROWS = 32  # up to this many rows per call the integer kernels run (decode); above, dequantize


@dataclass(frozen=True)
class QuantSpec:
    """What ``quantize_model`` does; stored in a quantized folder's config.json as ``quantization``."""

    bits: int = 8  # 8: per output channel; 4: per group of inputs
    group: int = 128  # int4: inputs per scale (32 or 128 usual; see layer_group); ignored for int8
    symmetric: bool = True  # int4: False gives each group a zero point (min w), a finer grid

    def __post_init__(self) -> None:
        if self.bits not in (8, 4):
            raise ConfigError(f"bits must be 8 or 4, got {self.bits}")
        if self.bits == 8 and not self.symmetric:
            raise ConfigError("symmetric=false is for bits=4: int8 is symmetric per channel")
        if self.bits == 4 and (self.group < 32 or self.group & (self.group - 1)):
            raise ConfigError(f"group must be a power of two >= 32 for bits=4, got {self.group}")

    def to_dict(self) -> dict:
        return asdict(self) if self.bits == 4 else {"bits": 8}


def quantize_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """q (N, K) int8 and s (N,) fp32 of w (N, K), per output row: ŵ = q s."""
    w = w.float()
    s = w.abs().amax(dim=1).clamp(min=1e-12) / 127
    return (w / s[:, None]).round().clamp(-127, 127).to(torch.int8), s


# The symmetric int4 scale is searched among these fractions of max|w| / 7: clipping a group's largest
# weights can buy a finer step for all the others (the least-squares choice, as llama.cpp's quantizers do).
SCALE_FRACTIONS = torch.linspace(0.5, 1.0, 26)


def quantize_int4(w: Tensor, group: int, symmetric: bool) -> tuple[Tensor, Tensor, Tensor]:
    """q (N, K) uint8 in 0..15, s and z (N, K / group) fp32 of w (N, K): ŵ = (q - 8) s + z, the form
    the CPU kernel takes. Symmetric: z = 0 and per group the s = a max|w| / 7 (a in
    ``SCALE_FRACTIONS``) with the least squared error sum (w - ŵ)^2; asymmetric: the min/max grid,
    z = min w + 8 s."""
    n, k = w.shape
    g = w.float().view(n, k // group, group)
    if symmetric:
        top = g.abs().amax(dim=-1).clamp(min=1e-12) / 7
        best = None
        for a in SCALE_FRACTIONS.tolist():
            s = top * a
            q = (g / s[..., None]).round().clamp(-8, 7)
            err = (q * s[..., None] - g).square().sum(dim=-1)
            if best is None:
                best = err, s, q
            else:
                better = err < best[0]
                best = (
                    torch.where(better, err, best[0]),
                    torch.where(better, s, best[1]),
                    torch.where(better[..., None], q, best[2]),
                )
        s, q = best[1], best[2] + 8
        z = torch.zeros_like(s)
    else:
        low, high = g.amin(dim=-1), g.amax(dim=-1)
        s = ((high - low) / 15).clamp(min=1e-12)
        q = ((g - low[..., None]) / s[..., None]).round().clamp(0, 15)
        z = low + 8 * s
    return q.view(n, k).to(torch.uint8), s, z


def dequantize_int4(q: Tensor, s: Tensor, z: Tensor) -> Tensor:
    n, k = q.shape
    groups = s.size(1)
    return ((q.view(n, groups, -1).float() - 8) * s[..., None] + z[..., None]).view(n, k)


def pack_nibbles(q: Tensor) -> Tensor:
    """(N, K) values 0..15 -> (N, K / 2) bytes, column 2j in the low nibble: half the size on disk."""
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_nibbles(packed: Tensor) -> Tensor:
    return torch.stack((packed & 15, packed >> 4), dim=-1).view(packed.size(0), -1)


def _rows(x: Tensor) -> Tensor:
    return x.reshape(-1, x.size(-1))


def on_kernel(x: Tensor) -> bool:
    """Whether the integer kernel takes input x: on a CPU, at most ``KERNEL_ROWS`` rows."""
    return x.device.type == "cpu" and x.numel() <= KERNEL_ROWS * x.size(-1)


def _output(y: Tensor, x: Tensor, bias: Tensor | None) -> Tensor:
    """The kernel's bf16 rows (N, out) as x's dtype and shape, plus the bias."""
    y = y.to(x.dtype).view(*x.shape[:-1], y.size(-1))
    return y if bias is None else y + bias.to(x.dtype)


def dequantized_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))


class Int8Linear(nn.Module):
    """y = x ŵ^T + b with ŵ = q s (``quantize_int8``): int8 weights, one scale per output."""

    def __init__(self, in_features: int, out_features: int, bias: bool, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer(
            "qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device)
        )
        self.register_buffer("scale", torch.ones(out_features, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, linear.weight.device)
        layer.qweight, layer.scale = quantize_int8(linear.weight.detach())
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return layer

    def dequantized(self) -> Tensor:
        return self.qweight.float() * self.scale[:, None]

    def forward(self, x: Tensor) -> Tensor:
        if not on_kernel(x):
            return dequantized_linear(x, self.dequantized(), self.bias)
        y = torch._weight_int8pack_mm(
            _rows(x).to(torch.bfloat16), self.qweight, self.scale.to(torch.bfloat16)
        )
        return _output(y, x, self.bias)


class Int4Linear(nn.Module):
    """y = x ŵ^T + b with ŵ = (q - 8) s + z per group of ``group`` inputs (``quantize_int4``); q is
    stored two per byte and laid out for the CPU kernel once, on first use."""

    def __init__(self, in_features: int, out_features: int, bias: bool, group: int, device=None):
        super().__init__()
        if in_features % group:
            raise LmforgeError(f"int4 group {group} does not divide the {in_features} inputs")
        self.in_features, self.out_features, self.group = in_features, out_features, group
        groups = in_features // group
        shape = (out_features, in_features // 2)
        self.register_buffer("qweight", torch.zeros(shape, dtype=torch.uint8, device=device))
        self.register_buffer("scale", torch.ones(out_features, groups, device=device))
        self.register_buffer("zero", torch.zeros(out_features, groups, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device)) if bias else None
        self._kernel: tuple[tuple, Tensor, Tensor] | None = None  # (key, packed weight, scales+zeros)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group: int, symmetric: bool) -> Int4Linear:
        layer = cls(
            linear.in_features, linear.out_features, linear.bias is not None, group, linear.weight.device
        )
        q, layer.scale, layer.zero = quantize_int4(linear.weight.detach(), group, symmetric)
        layer.qweight = pack_nibbles(q)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return layer

    def dequantized(self) -> Tensor:
        return dequantize_int4(unpack_nibbles(self.qweight), self.scale, self.zero)

    def _packed(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        key = (dtype, self.qweight.data_ptr(), self.qweight._version, self.scale._version, self.zero._version)
        if self._kernel is None or self._kernel[0] != key:
            q = unpack_nibbles(self.qweight).to(torch.int32)
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
            scales_zeros = torch.stack((self.scale, self.zero), dim=-1).transpose(0, 1).contiguous()
            self._kernel = (key, packed, scales_zeros.to(dtype))
        return self._kernel[1], self._kernel[2]

    def forward(self, x: Tensor) -> Tensor:
        if not on_kernel(x):
            return dequantized_linear(x, self.dequantized(), self.bias)
        packed, scales_zeros = self._packed(torch.bfloat16)
        rows = _rows(x).to(torch.bfloat16)
        return _output(
            torch.ops.aten._weight_int4pack_mm_for_cpu(rows, packed, self.group, scales_zeros), x, self.bias
        )


def _targets(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, name, layer) of every ``nn.Linear`` except the output head."""
    return [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear) and child is not getattr(model, "lm_head", None)
    ]


def layer_group(group: int, in_features: int) -> int | None:
    """The int4 group of a layer: ``group``, or where it does not divide the inputs the largest power
    of two below it that does (SmolLM2's 576 inputs take 64 for 128); None (stays float) below 32."""
    while group >= 32:
        if in_features % group == 0:
            return group
        group //= 2
    return None


def quantize_model(model: nn.Module, spec: QuantSpec) -> int:
    """Replace every linear layer but the head by its quantized form, in place; returns how many.
    An int4 layer takes ``layer_group``'s group; one with none stays float. On a model built on the
    meta device this makes the empty quantized layers a quantized folder's tensors load into."""
    count = 0
    for parent, name, linear in _targets(model):
        group = layer_group(spec.group, linear.in_features)
        if spec.bits == 8:
            setattr(parent, name, Int8Linear.from_linear(linear))
        elif group is not None:
            setattr(parent, name, Int4Linear.from_linear(linear, group, spec.symmetric))
        else:
            continue
        count += 1
    return count
