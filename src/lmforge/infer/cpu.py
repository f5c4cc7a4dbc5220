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

An int8 Llama-family model in fp32 decodes each step in one call of lmforge's C kernel
(``Int8Decoder``), and so does an encoder-decoder's decoder in fp32 at a few rows (``Seq2SeqDecoder``:
beam search and greedy translation): between its matmuls a layer runs some forty small PyTorch
operations (norms, rotations, attention, residuals), and at a few rows each costs more in dispatch than
in arithmetic. On a 135M int8 model that overhead was about half of every step.
"""

from __future__ import annotations

import copy
import weakref

import torch
from torch import Tensor, nn

from lmforge.models import native
from lmforge.models.gpt import GPT
from lmforge.models.layers import Block, KVCache, RMSNorm, SwiGLU
from lmforge.models.quant import NATIVE_MAX_INPUTS, Int4Linear, Int8Linear, native_int8
from lmforge.models.seq2seq import MemoryKV, Seq2Seq

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
    if has_hooks(model):
        return None  # a copy would bypass the hooks (they must see every decode step)
    if weight.dtype == torch.bfloat16:
        return 1 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    return 4 if weight.dtype == torch.float32 else None


def has_hooks(model: nn.Module) -> bool:
    """Whether a module of ``model`` has forward hooks: a packed copy or a native step would bypass them."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _weights_version(model: nn.Module) -> tuple:
    """Changes when a weight is replaced, changed in place, cast or given new storage (``p.data = ...``);
    not when changed through ``p.data`` in place, which bypasses the version counter."""
    return tuple((id(p), p._version, p.dtype, p.data_ptr()) for p in model.parameters())


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
    # quantized layers are not packed: the copy uses them as they are, with their kernels' layouts
    shared |= {id(m): m for m in model.modules() if isinstance(m, Int8Linear | Int4Linear)}
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


class Int8Decoder:
    """A decode step of ``model`` (a ``GPT`` with RoPE, RMSNorm, pre-norm blocks, a SwiGLU MLP and every
    block's linear layers int8, in fp32 on a CPU) for rows that each add one token at their own
    position: the blocks in one call of ``lmforge_int8_decode`` (``models/kernels/int8.c``), the
    embedding, final norm and head in PyTorch. Made per decode run (the weights' layout is cached on
    each layer); ``int8_decoder`` says whether a model qualifies."""

    def __init__(self, model: GPT):
        self.model, self.lib = model, native_int8()
        keep, pointers = [], []
        for block in model.blocks:
            a, f = block.attn, block.mlp
            for part in (block.attn_norm.weight, a.qkv, a.proj, block.mlp_norm.weight, f.gate_up, f.proj):
                tensors = part._vnni() if isinstance(part, Int8Linear) else (part.detach().contiguous(),)
                keep += tensors
                pointers += [0 if t is None else t.data_ptr() for t in tensors]
        self.keep, self.pointers = keep, torch.tensor(pointers, dtype=torch.int64)

    def __call__(self, tokens: list[int], positions: list[int], cache: KVCache) -> Tensor | None:
        """Logits (rows, vocab) after feeding row i ``tokens[i]`` at ``positions[i]`` (its cache length,
        cache row i); None when an activation is not finite (the caller decodes its own way)."""
        m, c = self.model, self.model.config
        x = m.tok_emb(torch.tensor(tokens)).contiguous()
        pos = torch.tensor(positions, dtype=torch.int64)
        status = self.lib.lmforge_int8_decode(
            c.n_layer, len(tokens), c.d_model, c.n_head, c.n_kv_head, c.head_dim, c.d_ff, c.norm_eps,
            self.pointers.data_ptr(), x.data_ptr(), pos.data_ptr(),
            m.rope.cos.data_ptr(), m.rope.sin.data_ptr(),
            cache.k.data_ptr(), cache.v.data_ptr(), cache.k.size(1), cache.k.size(3), torch.get_num_threads(),
        )  # fmt: skip
        return None if status else m.lm_head(m.norm_f(x))


def _llama_block(block: nn.Module) -> bool:
    return (
        isinstance(block, Block)
        and block.norm_position == "pre"
        and block.cross_attn is None
        and isinstance(block.attn_norm, RMSNorm)
        and isinstance(block.mlp_norm, RMSNorm)
        and isinstance(block.mlp, SwiGLU)
        and all(isinstance(x, Int8Linear) for x in (block.attn.qkv, block.attn.proj, *block.mlp.children()))
    )


def int8_decoder(model: nn.Module, cache: KVCache) -> Int8Decoder | None:
    """The native decode step for ``model`` and its decode ``cache``, or None: not an int8 Llama-family
    ``GPT`` in fp32 on a CPU, in training, with hooks, a cache of another dtype or layout, layers wider
    than the kernel's int32 sums allow, or no kernel for this CPU."""
    if not isinstance(model, GPT) or model.training or native_int8() is None:
        return None
    c = model.config
    if c.pos_emb != "rope" or c.norm != "rmsnorm" or c.mlp != "swiglu":
        return None
    norms = [w for b in model.blocks for w in (b.attn_norm.weight, b.mlp_norm.weight)]
    floats = (model.tok_emb.weight, model.rope.cos, model.rope.sin, cache.k, cache.v, *norms)
    if any(t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous() for t in floats):
        return None
    if has_hooks(model):
        return None
    shape = (c.n_layer, cache.k.size(1), c.n_kv_head, cache.k.size(3), c.head_dim)
    if cache.k.shape != shape or cache.v.shape != shape or model.rope.cos.shape[0] < cache.k.size(3):
        return None
    if max(c.d_model, c.n_head * c.head_dim, c.d_ff) > NATIVE_MAX_INPUTS:
        return None
    if not all(_llama_block(block) for block in model.blocks):
        return None
    return Int8Decoder(model)


# Up to this many rows a seq2seq decode step runs in C (``Seq2SeqDecoder``); measured on the 2-core
# Xeon, the C step wins from 5 to 160 rows (a beam of 5 over 32 sources) at d_model 256 and 512; beyond
# what was measured, MKL's GEMM may win.
SEQ2SEQ_NATIVE_ROWS = 256
Bound = tuple[list[Tensor], Tensor]  # Seq2SeqDecoder.bind: the memory's K, V contiguous; the step's pointers
# the kernel's activation codes (kernels/decode.c)
_ACTIVATION_CODES = {"relu": 0, "gelu": 1, "gelu_tanh": 2, "silu": 3}


def logz_and_topk(logits: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor] | None:
    """Per row of fp32 CPU ``logits`` (n, V): log Z = logsumexp (n, 1) and the k largest values and
    their indices (n, k), largest first (ties: the lower index first), in one pass of lmforge's C
    kernel (beam search reads the logits once instead of five times); None where that kernel is not
    built, or when a logit is NaN (PyTorch's ranking of NaN is kept)."""
    lib = native.library("decode")
    if lib is None or logits.dtype != torch.float32 or logits.device.type != "cpu" or logits.dim() != 2:
        return None
    n, v = logits.shape
    if k > v:
        return None
    x = logits.contiguous()
    log_z, values = torch.empty(n, 1), torch.empty(n, k)
    indices = torch.empty(n, k, dtype=torch.int64)
    out = (log_z.data_ptr(), values.data_ptr(), indices.data_ptr())
    if lib.lmforge_logz_topk(x.data_ptr(), n, v, k, *out, torch.get_num_threads()):
        return None
    return log_z, values, indices


def pack_fp32(weight: Tensor) -> Tensor:
    """W (N, K) as the seq2seq kernel reads it: blocks of 16 outputs, w[n/16][k][16], N padded by zeros."""
    n, k = weight.shape
    padded = torch.zeros(native.round16(n), k)
    padded[:n] = weight.detach().float()
    return padded.view(-1, 16, k).transpose(1, 2).contiguous()


class Seq2SeqDecoder:
    """A decode step of a ``Seq2Seq``'s decoder (fp32, CPU) for rows that all add one token at the same
    position (beam search, greedy): every block in one call of ``lmforge_seq2seq_decode``
    (``models/kernels/decode.c``), the embedding, final norm and head in PyTorch. ``seq2seq_decoder``
    makes one per model (cached while its weights do not change)."""

    def __init__(self, model: Seq2Seq):
        # the parts a step runs in PyTorch, not the model: the cache of these is keyed weakly on it
        self.config, self.embed, self.norm = model.config, model.dec_emb, model.dec_norm
        self.lib = native.library("decode")
        c = model.config
        self.activation = _ACTIVATION_CODES[c.activation]
        self.keep: list[Tensor] = []
        self.layers: list[list[int]] = []
        for block in model.decoder:
            pointers = []
            for layer in (block.attn.qkv, block.attn.proj, block.cross_attn.q, block.cross_attn.proj):
                pointers += self._held(pack_fp32(layer.weight), native.pad16(layer.bias))
            pointers += self._held(pack_fp32(block.mlp.fc.weight), native.pad16(block.mlp.fc.bias))
            pointers += self._held(pack_fp32(block.mlp.proj.weight), native.pad16(block.mlp.proj.bias))
            for norm in (block.attn_norm, block.cross_norm, block.mlp_norm):
                pointers += self._held(norm.weight.detach().contiguous(), norm.bias.detach().contiguous())
            self.layers.append(pointers)

    def _held(self, *tensors: Tensor) -> list[int]:
        self.keep += tensors
        return [t.data_ptr() for t in tensors]

    def bind(self, memory: MemoryKV) -> Bound:
        """What a step reads of the encoder's memory: each layer's keys and values contiguous, and every
        pointer of the step (the caller keeps it while the memory stays the same)."""
        kv = [t.contiguous() for pair in memory for t in pair]
        pairs = zip(self.layers, kv[::2], kv[1::2])
        pointers = [p for layer, k, v in pairs for p in [*layer, k.data_ptr(), v.data_ptr()]]
        return kv, torch.tensor(pointers, dtype=torch.int64)

    def __call__(
        self, tokens: Tensor, bound: Bound, valid: Tensor | None, cache: KVCache, beams: int
    ) -> Tensor | None:
        """The decoder's last states (rows, d_model) after feeding cache row i ``tokens[i]`` (rows, 1) at
        the cache's length, rows in blocks of ``beams`` per memory row (``bound``: ``bind`` of the
        memory); None when an activation is not finite (the cache is as it was: the caller decodes its
        own way)."""
        c = self.config
        kv, pointers = bound
        pos = cache.reserve(1)
        x = self.embed(tokens, torch.full_like(tokens, pos))[:, 0].contiguous()
        src = None if valid is None else valid.contiguous()
        status = self.lib.lmforge_seq2seq_decode(
            c.n_dec_layer, x.size(0), c.d_model, c.n_head, c.d_ff, c.norm_eps, c.norm_position == "pre",
            self.activation, pointers.data_ptr(), x.data_ptr(), pos,
            cache.k.data_ptr(), cache.v.data_ptr(), cache.k.size(1), cache.k.size(3), beams, kv[0].size(2),
            None if src is None else src.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        if status:
            cache.length = pos
            return None
        return x if self.norm is None else self.norm(x)


def _plain_decoder_block(block: nn.Module) -> bool:
    """A decoder block whose linear layers are plain ``nn.Linear`` with biases and whose norms are
    affine ``nn.LayerNorm``: what the C step reads."""
    a, x, f = block.attn, block.cross_attn, block.mlp
    linears = (a.qkv, a.proj, x.q, x.proj, f.fc, f.proj)
    norms = (block.attn_norm, block.cross_norm, block.mlp_norm)
    return all(type(layer) is nn.Linear and layer.bias is not None for layer in linears) and all(
        type(norm) is nn.LayerNorm and norm.weight is not None and norm.bias is not None for norm in norms
    )


_SEQ2SEQ: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Seq2SeqDecoder]] = weakref.WeakKeyDictionary()


def seq2seq_decoder(model: nn.Module, cache: KVCache) -> Seq2SeqDecoder | None:
    """The native decode step for an encoder-decoder and its self-attention ``cache``, or None: not a
    ``Seq2Seq`` in fp32 on a CPU, in training, with hooks, a cache of another layout, or no kernel for
    this CPU."""
    if not isinstance(model, Seq2Seq) or model.training or native.library("decode") is None:
        return None
    c = model.config
    if c.activation not in _ACTIVATION_CODES:
        return None
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in model.parameters()):
        return None
    if has_hooks(model):
        return None
    if not all(_plain_decoder_block(block) for block in model.decoder):
        return None  # quantized or LoRA layers, norms without affine parameters: PyTorch's step
    shape = (c.n_dec_layer, cache.k.size(1), c.n_head, cache.k.size(3), c.head_dim)
    if cache.k.shape != shape or cache.v.shape != shape or cache.k.dtype != torch.float32:
        return None
    if not (cache.k.is_contiguous() and cache.v.is_contiguous()):
        return None
    version = _weights_version(model)
    cached = _SEQ2SEQ.get(model)
    if cached is None or cached[0] != version:
        cached = _SEQ2SEQ[model] = (version, Seq2SeqDecoder(model))
    return cached[1]
