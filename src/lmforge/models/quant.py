"""Weight-only quantization: linear layers whose weights are stored as 8- or 4-bit integers and scales.

The round trip of a weight w within its group (int8: a whole output row; int4: ``group`` consecutive
inputs of a row), as ``quantize_int8`` / ``quantize_int4`` write it:

    int8, symmetric:   s = max|w| / 127            q = clamp(round(w / s), -127, 127)    ŵ = q s
    int4, symmetric:   s = a max|w| / 7            q = clamp(round(w / s), -8, 7)        ŵ = q s
                       (a in [0.5, 1]: the least squared error sum (w - ŵ)^2 of the group)
    int4, asymmetric:  s, m least squares          q = clamp(round((w - m) / s), 0, 15)  ŵ = q s + m
                       (from the min/max grid s = (max w - min w) / 15, m = min w, and narrower ones:
                       the least squared error of the group; the min/max grid when nothing beats it)

so |w - ŵ| <= s / 2 for every weight within the grid's range, which is all of them except the few a
search clips, up to the rounding of s and z to bf16, in which they are stored (the min/max grid spends
all 16 levels on [min w, max w]).
A decode step (at most ``KERNEL_ROWS`` rows) multiplies on the integers, never a dequantized matrix:
int8 on a CPU with AVX512-VNNI through lmforge's own kernel (``kernels/int8.c``: the activations
split exactly into three int8 terms, VNNI byte dot products; 1.5-1.9x PyTorch's kernel at one row and
about fp32-exact), elsewhere PyTorch's CPU kernels ``_weight_int8pack_mm`` and
``_weight_int4pack_mm_for_cpu``, fed bf16 activations (their fp32 path is several times slower than a
float matmul on a Xeon without AMX; with bf16 they beat it 2-4x at 1-8 rows). Longer inputs (prefill,
scoring a text) are compute-bound: there the weights are dequantized once per call and multiplied in
the input's dtype. Other devices always dequantize.
The head and the embeddings stay float: in most small models the head is the embedding matrix (tied),
and its errors go straight into the logits.
"""

from __future__ import annotations

import ctypes
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.config import ConfigError
from lmforge.errors import LmforgeError
from lmforge.models import native

KERNEL_ROWS = 32  # up to this many rows per call the integer kernels run (decode); above, dequantize
NATIVE_MAX_INPUTS = 1 << 16  # the VNNI kernel's int32 sums hold 255 * 127 * K up to this K


@dataclass(frozen=True)
class QuantSpec:
    """What ``quantize_model`` does; stored in a quantized folder's config.json as ``quantization``."""

    bits: int = 8  # 8: per output channel; 4: per group of inputs
    group: int = 128  # int4: inputs per scale (32 or 128 usual; see layer_group); ignored for int8
    symmetric: bool = True  # int4: False gives each group a zero point: the grid spans its own range

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
# The asymmetric grid starts from each group's min/max grid and from grids over these centred fractions
# of max w - min w; each is refitted (twice) by least squares to the levels its weights round to.
RANGE_FRACTIONS = torch.linspace(0.6, 1.0, 9)


def int4_levels(w: Tensor, s: Tensor, z: Tensor) -> Tensor:
    """The levels 0..15 of weights w on the grid ŵ = (q - 8) s + z (s and z broadcast to w)."""
    return ((w - z) / s + 8).round().clamp(0, 15)


def _as_stored(g: Tensor, s: Tensor, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A candidate grid for groups g (..., G) as it is stored, its step s and zero point z rounded to
    bf16 (half the bytes of fp32, and what the CPU kernel takes): (squared error sum (w - ŵ)^2 per
    group, s, z, levels)."""
    s, z = s.bfloat16().float(), z.bfloat16().float()
    q = int4_levels(g, s[..., None], z[..., None])
    return ((q - 8) * s[..., None] + z[..., None] - g).square().sum(dim=-1), s, z, q


def _keep_best(best: tuple[Tensor, ...] | None, err: Tensor, s: Tensor, z: Tensor, q: Tensor) -> tuple:
    """Per group, the candidate grid (err, s, z, q) of least squared error so far."""
    if best is None:
        return err, s, z, q
    better = err < best[0]
    return tuple(
        torch.where(better[..., None] if new.dim() > err.dim() else better, new, old)
        for new, old in zip((err, s, z, q), best)
    )


def _least_squares(g: Tensor, q: Tensor, s: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
    """The step and offset minimising sum (q s + m - w)^2 for fixed levels q (a line through the points
    (q_i, w_i)); groups whose levels are all equal keep (s, m)."""
    n = g.size(-1)
    sq, sw, sqq, sqw = q.sum(-1), g.sum(-1), (q * q).sum(-1), (q * g).sum(-1)
    det = n * sqq - sq * sq
    fitted = (n * sqw - sq * sw) / det.clamp(min=1e-12)
    ok = (det > 0) & (fitted > 1e-12)
    s = torch.where(ok, fitted, s)
    return s, torch.where(ok, (sw - s * sq) / n, m)


def quantize_int4(w: Tensor, group: int, symmetric: bool) -> tuple[Tensor, Tensor, Tensor]:
    """q (N, K) uint8 in 0..15, s and z (N, K / group) of w (N, K) (fp32 holding bf16 values, as they
    are stored): ŵ = (q - 8) s + z, the form the CPU kernel takes. Per group, the grid of least
    squared error sum (w - ŵ)^2 among: symmetric (z = 0), s = a max|w| / 7 for a in
    ``SCALE_FRACTIONS``; asymmetric (ŵ = q s + m, z = m + 8 s), the min/max grid s = (max w - min w)
    / 15, m = min w, and grids over ``RANGE_FRACTIONS`` of that range with (s, m) refitted by least
    squares to their levels. The min/max grid stays when nothing beats it, e.g. on weights that
    already sit on a 4-bit grid (a Q4_1 GGUF's)."""
    n, k = w.shape
    g = w.float().view(n, k // group, group)
    if symmetric:
        top = g.abs().amax(dim=-1).clamp(min=1e-12) / 7
        zero = torch.zeros_like(top)
        best = None
        for a in SCALE_FRACTIONS.tolist():
            best = _keep_best(best, *_as_stored(g, top * a, zero))
    else:
        low, span = g.amin(dim=-1), g.amax(dim=-1) - g.amin(dim=-1)
        s0 = (span / 15).clamp(min=1e-12)
        best = _keep_best(None, *_as_stored(g, s0, low + 8 * s0))
        for a in RANGE_FRACTIONS.tolist():
            s_a, m_a = (a * span / 15).clamp(min=1e-12), low + (1 - a) / 2 * span
            for _ in range(2):  # levels, then the line through them; a second round gains a little more
                levels = int4_levels(g, s_a[..., None], (m_a + 8 * s_a)[..., None])
                s_a, m_a = _least_squares(g, levels, s_a, m_a)
            best = _keep_best(best, *_as_stored(g, s_a, m_a + 8 * s_a))
    _, s, z, q = best
    return q.view(n, k).to(torch.uint8), s, z


def gptq_int4(
    w: Tensor, hessian: Tensor, group: int, symmetric: bool, damp: float = 0.1, block: int = 128
) -> tuple[Tensor, Tensor, Tensor]:
    """``quantize_int4``'s (q, s, z) of w (N, K), the rounding error of each input column passed on to
    the columns not yet quantized so that the layer's outputs on its calibration inputs X move least
    (GPTQ, Frantar et al. 2022): with H = X^T X (+ damp * mean diag H * I) and U the upper Cholesky
    factor of H^-1, column i's error e = (w_i - ŵ_i) / U_ii updates w_j -= e U_ij for every j > i
    (lazily, a ``block`` of columns at a time). Each group's grid is chosen by ``quantize_int4`` on the
    group's weights as updated when its first column comes. With a diagonal H (no zero on it) nothing
    is passed on: the result is ``quantize_int4``'s. H is the float model's (one shot), not that of
    the inputs the already quantized layers below would give (the paper's sequential variant).
    ``damp`` 0.1 (the paper: 0.01) measured better on SmolLM2 with calibration text from another
    domain than the text scored."""
    n, k = w.shape
    block = max(block, group)
    if block % group:
        raise LmforgeError(f"gptq: the group ({group}) must divide the block ({block})")
    wt = w.detach().float().t().contiguous()  # (K, N): a column of w is a contiguous row here
    h = hessian.detach().double().clone()
    dead = h.diagonal() == 0  # inputs that never fire: nothing to preserve
    h[dead, dead] = 1.0
    wt[dead] = 0.0
    h.diagonal().add_(damp * h.diagonal().mean())
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    q = torch.empty(k, n, dtype=torch.uint8, device=wt.device)
    s = torch.empty(k // group, n, device=wt.device)
    z = torch.empty_like(s)
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        errors = torch.empty(b1 - b0, n, device=wt.device)
        for i in range(b0, b1):
            j = i // group
            if i % group == 0:
                _, sj, zj = quantize_int4(wt[i : i + group].t(), group, symmetric)
                s[j], z[j] = sj[:, 0], zj[:, 0]
            level = int4_levels(wt[i], s[j], z[j])
            q[i] = level
            e = (wt[i] - ((level - 8) * s[j] + z[j])) / u[i, i]
            wt[i + 1 : b1].addr_(u[i, i + 1 : b1], e, alpha=-1)
            errors[i - b0] = e
        wt[b1:].addmm_(u[b0:b1, b1:].t(), errors, alpha=-1)
    return q.t().contiguous(), s.t().contiguous(), z.t().contiguous()


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


def stamp(t: Tensor | None) -> tuple | None:
    """What identifies a tensor's current values for a cache of a layout made from it: its storage and
    its version counter (which in-place changes bump; inference tensors have none and cannot change
    outside inference mode)."""
    if t is None:
        return None
    return t.data_ptr(), t.dtype, 0 if t.is_inference() else t._version


def pack_vnni(q: Tensor) -> tuple[Tensor, Tensor]:
    """int8 q (N, K) in the VNNI kernel's layout, blocks of 16 outputs x 4 inputs
    ([N/16][K/4][16][4], both padded by zeros to multiples of 16), and 128 sum_k q_nk per output."""
    n, k = q.shape
    padded = torch.zeros(native.round16(n), native.round16(k), dtype=torch.int8)
    padded[:n, :k] = q
    offset = padded.sum(dim=1, dtype=torch.int32) * 128
    return padded.view(-1, 16, padded.size(1) // 4, 4).transpose(1, 2).contiguous(), offset


def native_int8() -> ctypes.CDLL | None:
    """lmforge's int8 kernels for this CPU (``kernels/int8.c``: ``lmforge_int8_linear`` and the decode
    step ``lmforge_int8_decode``), or None where they cannot be built."""
    return native.library("int8")


def native_int8_linear(x: Tensor, packed: tuple[Tensor, ...], out_features: int) -> Tensor | None:
    """x (M, K) fp32 or bf16 on the CPU times ``Int8Linear._vnni``'s packed weights, in x's dtype; None
    when the kernel cannot take it (a non-finite x, too many inputs). Only when ``native_int8()``."""
    if x.size(1) > NATIVE_MAX_INPUTS:
        return None
    w, offset, scale, bias = packed
    x = x.contiguous()
    y = torch.empty(x.size(0), out_features, dtype=x.dtype)
    status = native_int8().lmforge_int8_linear(
        x.data_ptr(), x.dtype == torch.bfloat16, x.size(0), x.size(1), w.size(1) * 4, w.data_ptr(),
        offset.data_ptr(), scale.data_ptr(), bias.data_ptr() if bias is not None else None,
        y.data_ptr(), out_features, torch.get_num_threads(),
    )  # fmt: skip
    return y if status == 0 else None


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
        self._kernel: tuple[tuple, tuple[Tensor, ...]] | None = None  # (key, the VNNI kernel's tensors)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, linear.weight.device)
        layer.qweight, layer.scale = quantize_int8(linear.weight.detach())
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return layer

    def dequantized(self) -> Tensor:
        return self.qweight.float() * self.scale[:, None]

    def _vnni(self) -> tuple[Tensor, ...]:
        """The weights in the VNNI kernel's layout, scales and bias as fp32 padded like them (made on
        first use, again when the weights change)."""
        bias = self.bias
        key = (stamp(self.qweight), stamp(self.scale), stamp(bias))
        if self._kernel is None or self._kernel[0] != key:
            w, offset = pack_vnni(self.qweight)
            pad = native.pad16
            self._kernel = (key, (w, offset, pad(self.scale), None if bias is None else pad(bias)))
        return self._kernel[1]

    def forward(self, x: Tensor) -> Tensor:
        if not on_kernel(x) or (x.requires_grad and torch.is_grad_enabled()):
            return dequantized_linear(x, self.dequantized(), self.bias)
        native = x.dtype in (torch.float32, torch.bfloat16) and self.qweight.device.type == "cpu"
        if native and x.size(-1) == self.in_features and native_int8() is not None:
            y = native_int8_linear(_rows(x), self._vnni(), self.out_features)
            if y is not None:
                return y.view(*x.shape[:-1], self.out_features)
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
        bf16 = dict(dtype=torch.bfloat16, device=device)  # 2 bytes each: 4.5 bits per weight at group 64
        self.register_buffer("scale", torch.ones(out_features, groups, **bf16))
        self.register_buffer("zero", torch.zeros(out_features, groups, **bf16))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device)) if bias else None
        self._kernel: tuple[tuple, Tensor, Tensor] | None = None  # (key, packed weight, scales+zeros)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, group: int, symmetric: bool, hessian: Tensor | None = None
    ) -> Int4Linear:
        """The layer's weights rounded to the grid (``quantize_int4``), or with the X^T X of its
        calibration inputs by ``gptq_int4``."""
        layer = cls(
            linear.in_features, linear.out_features, linear.bias is not None, group, linear.weight.device
        )
        w = linear.weight.detach()
        q, s, z = (
            quantize_int4(w, group, symmetric) if hessian is None else gptq_int4(w, hessian, group, symmetric)
        )
        layer.scale, layer.zero = s.bfloat16(), z.bfloat16()  # exact: quantize_int4 rounds them so
        layer.qweight = pack_nibbles(q)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return layer

    def dequantized(self) -> Tensor:
        return dequantize_int4(unpack_nibbles(self.qweight), self.scale.float(), self.zero.float())

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        """Scales and zero points keep the dtype they were saved in: folders written before they
        became bf16 hold fp32 ones, which rounding on load would change."""
        for name in ("scale", "zero"):
            stored = state_dict.get(prefix + name)
            if stored is not None and stored.dtype != self._buffers[name].dtype:
                self._buffers[name] = torch.empty_like(self._buffers[name], dtype=stored.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _packed(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        key = (dtype, stamp(self.qweight), stamp(self.scale), stamp(self.zero))
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


def target_layers(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
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


def quantize_model(model: nn.Module, spec: QuantSpec, hessians: dict[nn.Module, Tensor] | None = None) -> int:
    """Replace every linear layer but the head by its quantized form, in place; returns how many.
    An int4 layer takes ``layer_group``'s group; one with none stays float; one with an entry in
    ``hessians`` (its inputs' X^T X) is quantized by GPTQ. On a model built on the meta device this
    makes the empty quantized layers a quantized folder's tensors load into."""
    count = 0
    for parent, name, linear in target_layers(model):
        group = layer_group(spec.group, linear.in_features)
        if spec.bits == 8:
            setattr(parent, name, Int8Linear.from_linear(linear))
        elif group is not None:
            hessian = None if hessians is None else hessians.get(linear)
            setattr(parent, name, Int4Linear.from_linear(linear, group, spec.symmetric, hessian))
        else:
            continue
        count += 1
    return count
