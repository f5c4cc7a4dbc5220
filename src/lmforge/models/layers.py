"""Transformer building blocks, each written to read like its equation.

Shapes: ``B`` batch, ``T`` query length, ``S`` key length, ``H`` query heads, ``G`` key/value heads
(grouped-query attention shares each K/V head among ``H // G`` query heads), ``D`` head dimension.
Boolean masks are ``True`` where attention is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.models import native

# --------------------------------------------------------------------------------------------------
# Attention


def attention_reference(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """softmax(Q K^T / sqrt(d_k)) V, transcribed literally (the tests' reference; slow on purpose)."""
    d_k = q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    grouped: bool = False,
) -> Tensor:
    """The same softmax(QK^T/sqrt(d_k))V through PyTorch's fused kernels (flash / memory-efficient);
    ``grouped``: k and v have fewer heads than q, each serving a group of query heads (no copies)."""
    gqa = {"enable_gqa": True} if grouped else {}  # the keyword exists from torch 2.5
    if _slow_bf16_backward(q):
        if mask is not None and mask.is_floating_point():
            mask = mask.float()
        with torch.autocast("cpu", enabled=False):  # autocast would cast the inputs back to bf16
            out = F.scaled_dot_product_attention(
                q.float(),
                k.float(),
                v.float(),
                attn_mask=mask,
                is_causal=is_causal,
                dropout_p=dropout_p,
                **gqa,
            )
        return out.to(torch.bfloat16)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p, **gqa
    )


def _slow_bf16_backward(q: Tensor) -> bool:
    """Whether the attention is trained in bf16 on a CPU (the queries' dtype, or CPU autocast's: RoPE's
    fp32 tables make autocast's q fp32 here) where PyTorch's flash-attention backward is slower in bf16
    than in fp32 (measured, torch 2.13, 2-core AMX Xeon, fwd+bwd in ms bf16 / fp32 at batch x heads x
    length x head dim): short sequences and narrow heads (32x4x64x32: 9.3 / 3.3; 32x4x64x64: 11.5 / 4.7;
    16x8x128x32: 20.3 / 7.6; 8x12x256x32: 21.5 / 15.5), whereas from 256 positions with heads of 64 or
    1,024 positions bf16 wins (8x6x256x64: 12.5 / 14.2; 4x12x512x64: 36.4 / 53.9; 1x12x1024x32: 14.4 /
    15.8). The output is bf16 either way."""
    if not (q.requires_grad and q.device.type == "cpu"):
        return False
    autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    if not (q.dtype == torch.bfloat16 or (autocast and q.dtype == torch.float32)):
        return False
    t, d = q.size(-2), q.size(-1)
    return t < 256 or (d < 64 and t < 1024)


def fused_kernels(*tensors: Tensor):
    """The one-pass element-wise layers (``kernels/fused.c``: RMSNorm, rotary positions, SiLU(gate) ⊙ up)
    for fp32 tensors on the CPU when no gradient is recorded; None otherwise (or without the native
    build, or while ``torch.compile`` traces: its graph fuses them itself), and PyTorch's operations run."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return None
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors):
        return None
    return native.library("fused")


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, G, S, D) -> (B, G * n_rep, S, D): each key/value head serves ``n_rep`` query heads."""
    if n_rep == 1:
        return x
    b, g, s, d = x.shape
    return x[:, :, None].expand(b, g, n_rep, s, d).reshape(b, g * n_rep, s, d)


def causal_mask(t: int, s: int, offset: int | Tensor = 0, device: torch.device | None = None) -> Tensor:
    """(T, S) mask: query i (at absolute position offset + i) sees keys 0..offset + i."""
    q_pos = torch.arange(t, device=device)[:, None] + offset
    return torch.arange(s, device=device)[None, :] <= q_pos


def attention_mask(key_valid: Tensor, t: int, *, causal: bool, offset: int | Tensor = 0) -> Tensor:
    """(B, 1, T, S) mask from a padding mask ``key_valid`` (B, S): no query sees a padding key; with
    ``causal`` (decoders) query i also sees only keys up to its position offset + i, without it
    (encoders, cross-attention) every valid key.

    A query whose every key is masked (a padding position) is allowed to see all keys instead, so the
    softmax stays finite; its output is never used.
    """
    allowed = key_valid[:, None, :].expand(-1, t, -1)
    if causal:
        allowed = allowed & causal_mask(t, key_valid.size(1), offset, key_valid.device)
    allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
    return allowed[:, None]


class KVCache:
    """Keys and values of every layer, preallocated for ``max_len`` positions.

    Decode step t writes one new key/value per layer and attends over the ``t`` stored ones, so a step
    costs O(t) rather than re-running the whole prefix. Two ways to index it:

    - ``reserve(t)`` claims the next t slots (``length`` grows), then ``update(layer, k, v)`` writes
      there and returns the filled prefix; the eager path, cheapest on CPU.
    - ``update(layer, k, v, index)`` with a tensor of positions: writes there and returns the whole
      buffer (the caller masks unwritten slots); every shape stays fixed, which CUDA graphs need.
    """

    def __init__(
        self,
        n_layer: int,
        batch: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ):
        shape = (n_layer, batch, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0
        self._spare: tuple[Tensor, Tensor] | None = None  # reorder's second buffer, made on first use

    def reserve(self, t: int) -> int:
        """Claim slots length..length + t for one forward call's new keys; returns the first."""
        start, end = self.length, self.length + t
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; asked to write up to {end}")
        self.length = end
        return start

    def reorder(self, rows: Tensor) -> None:
        """Keep row ``rows[i]`` as row i (beam search: each surviving beam continues its parent's keys);
        ``rows`` may repeat or drop rows, so the batch size may change. Only the filled slots are
        copied, once: gathered into a spare buffer that then becomes the cache (a step's reorder is
        one pass over O(length), not a gather and a copy back; ``k``/``v`` are new tensors after it)."""
        n = self.length
        if len(rows) != self.k.size(1):  # fewer rows: a new, smaller buffer
            self.k, self.v = self.k.index_select(1, rows), self.v.index_select(1, rows)
            self._spare = None
            return
        if self._spare is None:
            self._spare = torch.empty_like(self.k), torch.empty_like(self.v)
        k, v = self._spare
        for layer in range(self.k.size(0)):  # per layer: a gather along the outer dimension, 7x faster
            torch.index_select(self.k[layer, :, :, :n], 0, rows, out=k[layer, :, :, :n])
            torch.index_select(self.v[layer, :, :, :n], 0, rows, out=v[layer, :, :, :n])
        self._spare, self.k, self.v = (self.k, self.v), k, v

    def copy_rows(self, src: Tensor, dst: Tensor) -> None:
        """Row dst[i] takes row src[i]'s filled slots (no row is both a source and a destination); on a
        CPU in one pass of lmforge's C kernel (``kernels/decode.c``), else a gather and a scatter."""
        n = self.length
        if _copy_rows_natively(self, src, dst):
            return
        for layer in range(self.k.size(0)):
            k, v = self.k[layer, :, :, :n], self.v[layer, :, :, :n]
            k.index_copy_(0, dst, k.index_select(0, src))
            v.index_copy_(0, dst, v.index_select(0, src))

    def update(self, layer: int, k: Tensor, v: Tensor, index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if index is not None:
            self.k[layer].index_copy_(2, index, k)
            self.v[layer].index_copy_(2, index, v)
            return self.k[layer], self.v[layer]
        start = self.length - k.size(2)  # the slots the last ``reserve`` claimed
        self.k[layer, :, :, start : self.length] = k
        self.v[layer, :, :, start : self.length] = v
        return self.k[layer, :, :, : self.length], self.v[layer, :, :, : self.length]


def _copy_rows_natively(cache: KVCache, src: Tensor, dst: Tensor) -> bool:
    """``KVCache.copy_rows`` in C when the cache is fp32 and contiguous on a CPU; whether it ran."""
    k, v = cache.k, cache.v
    if k.device.type != "cpu" or k.dtype != torch.float32 or not (k.is_contiguous() and v.is_contiguous()):
        return False
    lib = native.library("decode")
    if lib is None:
        return False
    src, dst = src.to(torch.int64).contiguous(), dst.to(torch.int64).contiguous()
    layers, rows, heads, max_len, d = k.shape
    lib.lmforge_copy_rows(
        k.data_ptr(), v.data_ptr(), layers, rows, heads, max_len, d, cache.length,
        src.data_ptr(), dst.data_ptr(), src.numel(), torch.get_num_threads(),
    )  # fmt: skip
    return True


def decode_positions_and_mask(
    input_ids: Tensor,
    positions: Tensor | None = None,
    key_valid: Tensor | None = None,
    cache: KVCache | None = None,
    cache_index: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Positions (B, T) and causal self-attention mask of T new tokens, which may continue a KV cache.

    The new tokens start where the cache ends (claimed here), or at slot ``cache_index`` of a
    fixed-shape cache, whose later, unwritten slots the mask hides. ``key_valid`` (B, S) marks padding
    among all keys attended to. Mask None: no padding and the queries are the last keys, which causal
    attention handles without one (training, unpadded prefill and decoding).
    """
    b, t = input_ids.shape
    offset: int | Tensor = 0
    if cache_index is not None:
        offset = cache_index[0]
        if key_valid is None:
            key_valid = torch.ones(b, cache.max_len, dtype=torch.bool, device=input_ids.device)
    elif cache is not None:
        offset = cache.reserve(t)
    if positions is None:
        positions = (torch.arange(t, device=input_ids.device) + offset).expand(b, t)
    mask = None if key_valid is None else attention_mask(key_valid, t, causal=True, offset=offset)
    return positions, mask


def split_heads(x: Tensor, n_head: int) -> Tensor:
    """(B, T, n_head * D) -> (B, n_head, T, D)."""
    b, t, _ = x.shape
    return x.view(b, t, n_head, -1).transpose(1, 2)


def multi_head_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, dropout_p: float = 0.0
) -> Tensor:
    """Concat(head_1..head_H) for q (B, H, T, D) and k, v (B, G, S, D), as (B, T, H * D).

    ``mask`` given: it alone decides what each query sees (build it with ``attention_mask``). Without
    one every key is seen, except with ``causal``: then the T queries are the last T of the S keys
    (S > T after a KV cache's prefix) and each sees the keys up to its own.
    """
    b, h, t, d = q.shape
    s = k.size(2)
    # without gradients, on the CPU: the kernel reads each K/V head for its group (no copies); CUDA's
    # fused kernels with a mask do not take grouped heads
    grouped = not torch.is_grad_enabled() and k.size(1) < h and q.device.type == "cpu"
    if not grouped:
        k, v = repeat_kv(k, h // k.size(1)), repeat_kv(v, h // v.size(1))
    is_causal = causal and mask is None and t > 1  # one query, the last key: it sees them all
    if is_causal and t < s:  # the fused kernels' causal mode aligns queries with the first keys
        mask, is_causal = causal_mask(t, s, s - t, q.device), False
    y = scaled_dot_product_attention(q, k, v, mask, is_causal, dropout_p, grouped)
    return y.transpose(1, 2).reshape(b, t, h * d)


class MultiHeadAttention(nn.Module):
    """Multi-head (or grouped-query) self-attention: heads_i = Attention(X W_q^i, X W_k^i, X W_v^i).

    One fused projection computes Q, K and V; ``n_kv_head < n_head`` gives grouped-query attention.
    ``causal``: each position sees only itself and earlier ones (decoders); otherwise every position
    (encoders).
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        n_kv_head: int,
        head_dim: int,
        bias: bool,
        dropout: float = 0.0,
        *,
        causal: bool,
    ):
        super().__init__()
        if n_head % n_kv_head:
            raise ValueError(f"n_head ({n_head}) must be a multiple of n_kv_head ({n_kv_head})")
        self.n_head, self.n_kv_head, self.head_dim, self.causal = n_head, n_kv_head, head_dim, causal
        self.qkv = nn.Linear(d_model, (n_head + 2 * n_kv_head) * head_dim, bias=bias)
        self.proj = nn.Linear(n_head * head_dim, d_model, bias=bias)
        self.dropout = dropout

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None = None,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        cache_index: Tensor | None = None,
    ) -> Tensor:
        h, g, d = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.qkv(x).split([h * d, g * d, g * d], dim=-1)
        q, k, v = split_heads(q, h), split_heads(k, g), split_heads(v, g)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            k, v = cache.update(layer, k, v, cache_index)
        dropout = self.dropout if self.training else 0.0
        return self.proj(multi_head_attention(q, k, v, mask, self.causal, dropout))


class CrossAttention(nn.Module):
    """Cross-attention: heads_i = Attention(X W_q^i, M W_k^i, M W_v^i), queries from the decoder's X,
    keys and values from the encoder's output M (the memory, of its own length S).

    No rotary positions: queries and keys index different sequences, so their offset means nothing.
    The memory's K and V are the same at every decode step: ``memory_kv`` computes them once.
    """

    def __init__(
        self, d_model: int, n_head: int, n_kv_head: int, head_dim: int, bias: bool, dropout: float = 0.0
    ):
        super().__init__()
        if n_head % n_kv_head:
            raise ValueError(f"n_head ({n_head}) must be a multiple of n_kv_head ({n_kv_head})")
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, head_dim
        self.q = nn.Linear(d_model, n_head * head_dim, bias=bias)
        self.kv = nn.Linear(d_model, 2 * n_kv_head * head_dim, bias=bias)
        self.proj = nn.Linear(n_head * head_dim, d_model, bias=bias)
        self.dropout = dropout

    def memory_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """K, V (B, G, S, D) of the memory (B, S, d_model); compute once, pass to every decode step."""
        k, v = self.kv(memory).chunk(2, dim=-1)
        return split_heads(k, self.n_kv_head), split_heads(v, self.n_kv_head)

    def forward(
        self, x: Tensor, memory: Tensor | tuple[Tensor, Tensor], mask: Tensor | None = None
    ) -> Tensor:
        """``memory``: (B, S, d_model), or its ``memory_kv``; ``mask``: the memory's padding,
        ``attention_mask(memory_valid, T, causal=False)``.

        The memory may have fewer rows than x: its B rows then serve x's B * r rows in consecutive
        groups of r (beam search: the r beams of a source share that source's memory). A group's
        queries attend side by side, as r * T queries of one row: the memory is never copied per beam.
        """
        k, v = memory if isinstance(memory, tuple) else self.memory_kv(memory)
        q = split_heads(self.q(x), self.n_head)  # (B * r, H, T, D)
        (rows, h, t, d), b = q.shape, k.size(0)
        r = rows // b
        if r > 1:
            q = q.view(b, r, h, t, d).transpose(1, 2).reshape(b, h, r * t, d)
            mask = None if mask is None else mask[:, :, :1]  # padding only: the same for every query
        dropout = self.dropout if self.training else 0.0
        y = multi_head_attention(q, k, v, mask, causal=False, dropout_p=dropout)  # (B, r * T, H * D)
        return self.proj(y.view(rows, t, h * d))


# --------------------------------------------------------------------------------------------------
# Positions


class RotaryEmbedding(nn.Module):
    """RoPE: rotate each (x_i, x_{i+D/2}) pair by angle pos * theta^(-2i/D).

    Rotating q and k makes q·k depend only on their relative position. cos/sin are tabulated once for
    ``max_seq_len`` positions (in fp32, then cast with the model like any buffer).
    """

    def __init__(self, head_dim: int, max_seq_len: int, theta: float = 10000.0):
        super().__init__()
        self.head_dim, self.max_seq_len, self.theta = head_dim, max_seq_len, theta
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)
        self.reset_tables()

    def reset_tables(self, device: torch.device | str | None = None) -> None:
        """(Re)compute the tables, e.g. after building the model on the meta device (where only their
        shape is set: arithmetic on meta tensors imports PyTorch's compiler, 0.8 s)."""
        d = self.head_dim
        if torch.empty(0, device=device).is_meta:
            self.cos = self.sin = torch.empty(self.max_seq_len, d, device="meta")
            return
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d))
        angles = torch.outer(torch.arange(self.max_seq_len, dtype=torch.float32, device=device), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)  # (max_seq_len, D)
        self.cos, self.sin = angles.cos(), angles.sin()

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos, sin for ``positions`` (B, T), shaped (B, 1, T, D) to broadcast over heads."""
        return self.cos[positions][:, None], self.sin[positions][:, None]


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x ⊙ cos + rotate_half(x) ⊙ sin: the 2-D rotation applied to every pair of channels."""
    lib = fused_kernels(x, cos, sin)
    if lib is not None and x.dim() == 4 and x.stride(-1) == 1:
        b, h, t, d = x.shape
        if cos.shape == sin.shape == (b, 1, t, d) and cos.is_contiguous() and sin.is_contiguous():
            y = x.new_empty(b, h, t, d)
            strides = x.stride()[:3]
            lib.lmforge_rotary(
                x.data_ptr(),
                b,
                h,
                t,
                d,
                *strides,
                cos.data_ptr(),
                sin.data_ptr(),
                y.data_ptr(),
                torch.get_num_threads(),
            )
            return y
    return x * cos + rotate_half(x) * sin


class SinusoidalPositions(nn.Module):
    """The original Transformer's fixed positions: PE(pos, i) = sin(pos / 10000^(2i/d)) in the first d/2
    channels and cos(pos / 10000^(2i/d)) in the last d/2 (the paper interleaves sin and cos; this is the
    same table with its channels permuted, as fairseq, tensor2tensor and Marian lay it out)."""

    def __init__(self, dim: int, max_seq_len: int):
        super().__init__()
        if dim % 2:
            raise ValueError(f"sinusoidal positions need an even dimension, got {dim}")
        self.dim, self.max_seq_len = dim, max_seq_len
        self.register_buffer("table", torch.empty(0), persistent=False)
        self.reset_tables()

    def reset_tables(self, device: torch.device | str | None = None) -> None:
        """(Re)compute the table, e.g. after building the model on the meta device (there: its shape)."""
        if torch.empty(0, device=device).is_meta:
            self.table = torch.empty(self.max_seq_len, self.dim, device="meta")
            return
        inv_freq = 10000.0 ** (-torch.arange(0, self.dim, 2, dtype=torch.float64, device=device) / self.dim)
        angles = torch.outer(torch.arange(self.max_seq_len, dtype=torch.float64, device=device), inv_freq)
        self.table = torch.cat([angles.sin(), angles.cos()], dim=-1).float()

    def forward(self, positions: Tensor) -> Tensor:
        """(..., dim) embeddings of integer ``positions``."""
        return self.table[positions]


# --------------------------------------------------------------------------------------------------
# Normalisation and feed-forward


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * g (computed in fp32: the mean of squares overflows in fp16)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        lib = fused_kernels(x, self.weight)
        if lib is not None and x.is_contiguous():
            y, d = torch.empty_like(x), x.size(-1)
            threads = torch.get_num_threads()
            lib.lmforge_rms_norm(
                x.data_ptr(), x.numel() // d, d, self.weight.data_ptr(), self.eps, y.data_ptr(), threads
            )
            return y
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def make_norm(kind: str, dim: int, eps: float, bias: bool) -> nn.Module:
    """LayerNorm y = (x - mean) / sqrt(var + eps) * g (+ b when ``bias``), or RMSNorm."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, bias=bias)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}; expected 'layernorm' or 'rmsnorm'")


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,  # exact, with the Gaussian CDF (BERT, BART)
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's tanh approximation
    "relu": F.relu,  # the original Transformer
    "silu": F.silu,  # swish (Marian)
}


def gelu(approximate: str) -> str:
    """The ``ACTIVATIONS`` name of GELU with transformers' ``approximate`` setting ("none" or "tanh")."""
    return "gelu_tanh" if approximate == "tanh" else "gelu"


class FeedForward(nn.Module):
    """FFN(x) = act(x W_1 + b_1) W_2 + b_2, act one of ``ACTIVATIONS``; ``dropout`` on its output while
    training (BERT's hidden dropout)."""

    def __init__(
        self, d_model: int, d_ff: int, bias: bool, activation: str = "gelu_tanh", dropout: float = 0.0
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}")
        self.fc = nn.Linear(d_model, d_ff, bias=bias)
        self.proj = nn.Linear(d_ff, d_model, bias=bias)
        self.act = ACTIVATIONS[activation]
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(self.act(self.fc(x))))


class SwiGLU(nn.Module):
    """FFN(x) = (SiLU(x W_gate) ⊙ x W_up) W_down (Llama); gate and up share one fused matmul."""

    def __init__(self, d_model: int, d_ff: int, bias: bool):
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * d_ff, bias=bias)
        self.proj = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        gate_up = self.gate_up(x)
        lib = fused_kernels(gate_up)
        if lib is not None and gate_up.is_contiguous():
            f = gate_up.size(-1) // 2
            act = gate_up.new_empty(*gate_up.shape[:-1], f)
            lib.lmforge_silu_mul(
                gate_up.data_ptr(), gate_up.numel() // (2 * f), f, act.data_ptr(), torch.get_num_threads()
            )
            return self.proj(act)
        gate, up = gate_up.chunk(2, dim=-1)
        return self.proj(F.silu(gate) * up)


class Block(nn.Module):
    """Residual block: self-attention, optionally cross-attention, then feed-forward, each sub-layer f
    wrapped as pre-norm x = x + f(Norm(x)) (GPT-2, Llama) or post-norm x = Norm(x + f(x)) (BERT, BART).

    Pre-norm keeps an identity path from input to output (stable deep training); post-norm normalises
    the residual stream itself, as the original Transformer did. ``cross_attn`` (with ``cross_norm``)
    makes a decoder block of an encoder-decoder: queries from x, keys/values from the encoder memory.
    ``dropout``: residual dropout on each sub-layer's output while training (the original Transformer's
    P_drop).
    """

    def __init__(
        self,
        attn: nn.Module,
        mlp: nn.Module,
        attn_norm: nn.Module,
        mlp_norm: nn.Module,
        norm_position: Literal["pre", "post"] = "pre",
        cross_attn: CrossAttention | None = None,
        cross_norm: nn.Module | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        if norm_position not in ("pre", "post"):
            raise ValueError(f"unknown norm_position {norm_position!r}; expected 'pre' or 'post'")
        if (cross_attn is None) != (cross_norm is None):
            raise ValueError("cross_attn and cross_norm come together")
        self.attn_norm, self.attn = attn_norm, attn
        self.mlp_norm, self.mlp = mlp_norm, mlp
        self.cross_norm, self.cross_attn = cross_norm, cross_attn
        self.norm_position = norm_position
        self.drop = nn.Dropout(dropout)

    def sublayer(self, x: Tensor, norm: nn.Module, f: Callable[[Tensor], Tensor]) -> Tensor:
        """x + Dropout(f(Norm(x))) (pre-norm) or Norm(x + Dropout(f(x))) (post-norm)."""
        if self.norm_position == "pre":
            return x + self.drop(f(norm(x)))
        return norm(x + self.drop(f(x)))

    def forward(
        self,
        x: Tensor,
        memory: Tensor | tuple[Tensor, Tensor] | None = None,
        memory_mask: Tensor | None = None,
        **attn_kwargs,
    ) -> Tensor:
        """``attn_kwargs`` go to self-attention; ``memory`` (or its K/V) and ``memory_mask`` to
        cross-attention."""
        x = self.sublayer(x, self.attn_norm, lambda h: self.attn(h, **attn_kwargs))
        if self.cross_attn is not None:
            x = self.sublayer(x, self.cross_norm, lambda h: self.cross_attn(h, memory, memory_mask))
        return self.sublayer(x, self.mlp_norm, self.mlp)
