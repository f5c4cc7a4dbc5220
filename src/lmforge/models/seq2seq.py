"""The encoder-decoder Transformer (Vaswani et al., 2017): translation, summarization.

p(y | x) = prod_t p(y_t | y_<t, x). The encoder reads the source x with bidirectional self-attention
into the memory M; each decoder block attends causally to the target prefix y_<t, then to M through
cross-attention, and the output head turns its last state into p(y_t | y_<t, x). The original model:
post-norm blocks, ReLU, sinusoidal positions, embeddings scaled by sqrt(d_model), one vocabulary shared
by source, target and output head. BART (learned positions from row 2, a LayerNorm on the embeddings,
GELU) and Marian (sinusoidal, swish) are the same stack with other switches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from lmforge.config import ConfigError
from lmforge.models.layers import (
    ACTIVATIONS,
    Block,
    CrossAttention,
    FeedForward,
    KVCache,
    MultiHeadAttention,
    SinusoidalPositions,
    attention_mask,
    decode_positions_and_mask,
)
from lmforge.models.losses import head_cross_entropy

MemoryKV = list[tuple[Tensor, Tensor]]  # per decoder layer: the memory's cross-attention K, V


@dataclass
class Seq2SeqConfig:
    """Shape and flavour of an encoder-decoder (defaults: the paper's base model, with a 32k vocabulary)."""

    arch: Literal["seq2seq"] = "seq2seq"  # the registry's name for this family (models/registry.py)
    vocab_size: int = 32000
    max_seq_len: int = 512  # positions, on each side
    n_enc_layer: int = 6
    n_dec_layer: int = 6
    n_head: int = 8
    d_model: int = 512
    d_ff: int | None = None  # default 4 d_model
    activation: str = "relu"  # relu (the paper), gelu (BART), gelu_tanh, silu (Marian)
    norm_position: Literal["pre", "post"] = "post"  # post: the paper; pre trains deep stacks more stably
    final_norm: bool | None = None  # a LayerNorm after each stack; default: with pre-norm only
    pos_emb: Literal["sinusoidal", "learned"] = "sinusoidal"
    pos_offset: int = 0  # learned positions start at this row (BART: 2)
    emb_scale: bool = True  # token embeddings times sqrt(d_model) (the paper, Marian)
    emb_norm: bool = False  # a LayerNorm on the summed embeddings (BART)
    share_embeddings: bool = True  # one embedding table for source and target (a joint vocabulary)
    tie_embeddings: bool = True  # the output head is the target embedding table
    logits_bias: bool = False  # a fixed bias added to the logits (BART's and Marian's final_logits_bias)
    norm_eps: float = 1e-5
    dropout: float = 0.1  # residual and embedding dropout (the paper's P_drop)
    attn_dropout: float = 0.0
    init_std: float = 0.02
    decoder_start_id: int = 1  # the token the decoder starts from (lmforge: bos; BART: eos; Marian: pad)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_seq_len", "n_enc_layer", "n_dec_layer", "n_head", "d_model"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ConfigError(f"model.d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"model.activation={self.activation!r}; expected one of {', '.join(ACTIVATIONS)}"
            )
        if self.pos_emb == "sinusoidal" and self.d_model % 2:
            raise ConfigError(f"sinusoidal positions need an even d_model, got {self.d_model}")
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.final_norm is None:
            self.final_norm = self.norm_position == "pre"

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


class Embeddings(nn.Module):
    """h_0 = Dropout(Norm(E[x_t] · s + P[t])), s = sqrt(d_model) or 1, P learned or sinusoidal."""

    def __init__(self, c: Seq2SeqConfig, tokens: nn.Embedding):
        super().__init__()
        self.tokens = tokens
        self.scale = math.sqrt(c.d_model) if c.emb_scale else 1.0
        if c.pos_emb == "learned":
            self.positions: nn.Module = nn.Embedding(c.max_seq_len + c.pos_offset, c.d_model)
        else:
            self.positions = SinusoidalPositions(c.d_model, c.max_seq_len)
        self.offset = c.pos_offset
        self.norm = nn.LayerNorm(c.d_model, eps=c.norm_eps) if c.emb_norm else None
        self.drop = nn.Dropout(c.dropout)

    def forward(self, ids: Tensor, positions: Tensor) -> Tensor:
        x = self.tokens(ids) * self.scale + self.positions(positions + self.offset)
        return self.drop(x if self.norm is None else self.norm(x))


class Seq2Seq(nn.Module):
    """Encoder blocks over the source, decoder blocks (self-, then cross-attention) over the target,
    the output head over the decoder's last states."""

    config_class = Seq2SeqConfig

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        c = self.config = config
        src_tokens = nn.Embedding(c.vocab_size, c.d_model)
        tgt_tokens = src_tokens if c.share_embeddings else nn.Embedding(c.vocab_size, c.d_model)
        self.enc_emb, self.dec_emb = Embeddings(c, src_tokens), Embeddings(c, tgt_tokens)
        self.encoder = nn.ModuleList([self._block(cross=False) for _ in range(c.n_enc_layer)])
        self.decoder = nn.ModuleList([self._block(cross=True) for _ in range(c.n_dec_layer)])
        self.enc_norm = self._norm() if c.final_norm else None
        self.dec_norm = self._norm() if c.final_norm else None
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.logits_bias:
            self.register_buffer("logits_bias", torch.zeros(1, c.vocab_size))  # (1, V), as HF stores it
        self.apply(self._init_weights)
        if c.tie_embeddings:
            self.lm_head.weight = tgt_tokens.weight

    def _norm(self) -> nn.LayerNorm:
        return nn.LayerNorm(self.config.d_model, eps=self.config.norm_eps)

    def _block(self, cross: bool) -> Block:
        c = self.config
        d, h = c.d_model, c.n_head
        attn = MultiHeadAttention(d, h, h, c.head_dim, True, c.attn_dropout, causal=cross)
        cross_attn = CrossAttention(d, h, h, c.head_dim, True, c.attn_dropout) if cross else None
        mlp = FeedForward(d, c.d_ff, True, c.activation)
        cross_norm = self._norm() if cross else None
        return Block(
            attn, mlp, self._norm(), self._norm(), c.norm_position, cross_attn, cross_norm, c.dropout
        )

    def _init_weights(self, module: nn.Module) -> None:
        """N(0, init_std) weights, zero biases; token embeddings N(0, 1/d_model) when scaled by
        sqrt(d_model), so that the scaled embedding has unit variance like the sinusoids."""
        c = self.config
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=c.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            std = c.d_model**-0.5 if c.emb_scale else c.init_std
            nn.init.normal_(module.weight, mean=0.0, std=std)

    # --- the two stacks ---------------------------------------------------------------------------------
    def encode(self, src_ids: Tensor, src_valid: Tensor | None = None) -> Tensor:
        """The memory M (B, S, d_model) of the source (B, S); ``src_valid`` (B, S): False at padding."""
        positions = torch.arange(src_ids.size(1), device=src_ids.device)
        x = self.enc_emb(src_ids, positions)
        mask = None if src_valid is None else attention_mask(src_valid, src_ids.size(1), causal=False)
        for block in self.encoder:
            x = block(x, mask=mask)
        return x if self.enc_norm is None else self.enc_norm(x)

    def memory_kv(self, memory: Tensor) -> MemoryKV:
        """Each decoder layer's cross-attention keys and values of the memory: the same at every
        decode step, so generation computes them once."""
        return [block.cross_attn.memory_kv(memory) for block in self.decoder]

    def decode(
        self,
        tgt_ids: Tensor,
        memory: Tensor | MemoryKV,
        src_valid: Tensor | None = None,
        *,
        cache: KVCache | None = None,
        last_only: bool = False,
        head: bool = True,
    ) -> Tensor:
        """Logits (B, T, vocab) of the next target token after each position of ``tgt_ids`` (B, T);
        ``memory``: the encoder's output or its ``memory_kv``. With ``cache`` the T tokens continue
        the cached prefix (generation); ``head=False``: the decoder's last states instead."""
        positions, _ = decode_positions_and_mask(tgt_ids, cache=cache)
        x = self.dec_emb(tgt_ids, positions)
        mask = None if src_valid is None else attention_mask(src_valid, tgt_ids.size(1), causal=False)
        for i, block in enumerate(self.decoder):
            layer_memory = memory[i] if isinstance(memory, list) else memory
            x = block(x, layer_memory, mask, cache=cache, layer=i)
        if last_only:
            x = x[:, -1:]
        if self.dec_norm is not None:
            x = self.dec_norm(x)
        return self.logits(x) if head else x

    def logits(self, x: Tensor) -> Tensor:
        """The output head: next-token logits of the decoder's last states x (..., d_model)."""
        logits = self.lm_head(x)
        if not self.config.logits_bias:
            return logits
        if logits.dim() > 1 and logits.dtype == self.logits_bias.dtype:
            return logits.add_(self.logits_bias)  # in place: a V-wide copy less per decode step
        return logits + self.logits_bias  # a promoted dtype (bf16 autocast: fp32 logits), or one row

    def forward(
        self,
        src_ids: Tensor,
        tgt_ids: Tensor,
        src_valid: Tensor | None = None,
        *,
        head: bool = True,
        labels: Tensor | None = None,
        label_smoothing: float = 0.0,
    ) -> Tensor:
        """Teacher forcing: logits (B, T, vocab) of p(y_t | y_<t, x) for the target inputs ``tgt_ids``
        (the decoder start token, then y_1..y_{T-1}); padding at the target's end needs no mask, as
        causal attention never lets a real token see it. With ``labels`` (B, T): the mean
        cross-entropy (label-smoothed by ``label_smoothing``), the head fused into it
        (``head_cross_entropy``: the logits are never stored)."""
        memory = self.encode(src_ids, src_valid)
        if labels is None:
            return self.decode(tgt_ids, memory, src_valid, head=head)
        states = self.decode(tgt_ids, memory, src_valid, head=False)
        bias = self.logits_bias if self.config.logits_bias else None
        return head_cross_entropy(states, self.lm_head, labels, label_smoothing, bias)

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None) -> KVCache:
        """A KV cache for the decoder's self-attention (cross-attention uses ``memory_kv``)."""
        c, p = self.config, self.lm_head.weight
        return KVCache(c.n_dec_layer, batch, c.n_head, max_len, c.head_dim, dtype or p.dtype, p.device)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per target token, with a source of about the same length: 6N for the matmuls
        (embedding lookups excluded, the output head included) plus attention, 12·d·T for each self-
        and cross-attention layer (PaLM, App. B)."""
        c = self.config
        lookups = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Embedding))
        if c.tie_embeddings:
            lookups -= c.vocab_size * c.d_model
        attention = 12 * c.d_model * seq_len * (c.n_enc_layer + 2 * c.n_dec_layer)
        return 6 * (self.num_params() - lookups) + attention
