"""The decoder-only Transformer: one config covers GPT-2 and Llama.

p(x_1..x_T) = prod_t p(x_t | x_<t); each factor is softmax(h_t W_out) where h_t comes from a stack of
pre-norm blocks over token (+ learned position) embeddings. GPT-2: learned positions, LayerNorm, GELU,
biases, tied input/output embeddings. Llama: rotary positions, RMSNorm, SwiGLU, no biases, grouped-query
attention, untied output head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from lmforge.config import ConfigError
from lmforge.models.layers import (
    Block,
    FeedForward,
    KVCache,
    MultiHeadAttention,
    RotaryEmbedding,
    SwiGLU,
    decode_positions_and_mask,
    gelu,
    make_norm,
)
from lmforge.models.losses import head_cross_entropy


@dataclass
class GPTConfig:
    """Shape and flavour of a decoder; ``None`` fields take the family's usual default."""

    arch: Literal["gpt"] = "gpt"  # the registry's name for this family (models/registry.py)
    vocab_size: int = 50257
    max_seq_len: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None  # < n_head: grouped-query attention
    d_model: int = 768
    d_ff: int | None = None  # GELU: 4 d_model; SwiGLU: 8/3 d_model rounded up to a multiple of 256
    head_dim: int | None = None  # default d_model // n_head
    pos_emb: Literal["learned", "rope"] = "learned"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    mlp: Literal["gelu", "swiglu"] = "gelu"
    gelu_approximate: Literal["none", "tanh"] = "tanh"
    bias: bool = True
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    dropout: float = 0.0
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_seq_len", "n_layer", "n_head", "d_model"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.n_head % self.n_kv_head:
            raise ConfigError(
                f"model.n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})"
            )
        if self.head_dim is None:
            if self.d_model % self.n_head:
                raise ConfigError(
                    f"model.d_model ({self.d_model}) must be divisible by n_head ({self.n_head})"
                )
            self.head_dim = self.d_model // self.n_head
        if self.pos_emb == "rope" and self.head_dim % 2:
            raise ConfigError(f"rotary embeddings need an even head_dim, got {self.head_dim}")
        if self.d_ff is None:
            if self.mlp == "gelu":
                self.d_ff = 4 * self.d_model
            else:
                self.d_ff = 256 * math.ceil(8 * self.d_model / 3 / 256)

    @property
    def num_kv_groups(self) -> int:
        return self.n_head // self.n_kv_head


def preset(name: str, overrides: list[str] | None = None) -> GPTConfig:
    """A model preset from ``configs/models/NAME.yaml`` (gpt2-124m, gpt2-350m, llama-small, ...)."""
    from lmforge.config import load_config

    return load_config(GPTConfig, f"models/{name}", overrides)


class GPT(nn.Module):
    """Token embeddings -> n_layer pre-norm blocks -> final norm -> vocabulary logits."""

    config_class = GPTConfig

    def __init__(self, config: GPTConfig):
        super().__init__()
        c = self.config = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = nn.Embedding(c.max_seq_len, c.d_model) if c.pos_emb == "learned" else None
        self.rope = RotaryEmbedding(c.head_dim, c.max_seq_len, c.rope_theta) if c.pos_emb == "rope" else None
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList([self._block() for _ in range(c.n_layer)])
        self.norm_f = make_norm(c.norm, c.d_model, c.norm_eps, c.bias)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 n_layer) so the residual stream's variance
        # does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                nn.init.normal_(p, mean=0.0, std=c.init_std / math.sqrt(2 * c.n_layer))

    def _block(self) -> Block:
        c = self.config
        attn = MultiHeadAttention(
            c.d_model, c.n_head, c.n_kv_head, c.head_dim, c.bias, c.dropout, causal=True
        )
        if c.mlp == "gelu":
            mlp = FeedForward(c.d_model, c.d_ff, c.bias, gelu(c.gelu_approximate))
        else:
            mlp = SwiGLU(c.d_model, c.d_ff, c.bias)
        norm = lambda: make_norm(c.norm, c.d_model, c.norm_eps, c.bias)  # noqa: E731
        return Block(attn, mlp, norm(), norm())

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)

    def forward(
        self,
        input_ids: Tensor,
        *,
        positions: Tensor | None = None,
        key_valid: Tensor | None = None,
        cache: KVCache | None = None,
        cache_index: Tensor | None = None,
        last_only: bool = False,
        head: bool = True,
        targets: Tensor | None = None,
        attention: Tensor | None = None,
    ) -> Tensor:
        """Logits (B, T, vocab) for ``input_ids`` (B, T); with ``head=False`` the final-normed hidden
        states (B, T, d_model) instead, for task heads (through ``forward``, so DDP/FSDP hooks run);
        with ``targets`` (B, T) the mean cross-entropy, the head fused into it (``head_cross_entropy``:
        the logits are never stored, which pays most in training).

        positions: (B, T) absolute positions (default: after what the cache holds).
        key_valid: (B, S) bool, False at padding, covering every key attended to (cached + new).
        cache / cache_index: the KV cache, and (for fixed-shape decoding) the slots to write.
        last_only: the last position only (all generation needs).
        attention: (B, 1, T, S), which keys each query sees, in place of the causal mask (a tree of
            requests that share a prefix, evaluate/loglik.py): bool, or additive (0 seen, -inf not) in the
            attention's dtype, which the fused kernel takes without converting it in every layer; give
            ``positions`` with it.
        """
        positions, mask = decode_positions_and_mask(input_ids, positions, key_valid, cache, cache_index)
        mask = mask if attention is None else attention
        x = self.tok_emb(input_ids)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        x = self.drop(x)
        rope = self.rope(positions) if self.rope is not None else None
        for i, block in enumerate(self.blocks):
            x = block(x, rope=rope, mask=mask, cache=cache, layer=i, cache_index=cache_index)
        x = self.norm_f(x[:, -1:] if last_only else x)
        if targets is not None:
            return head_cross_entropy(x, self.lm_head, targets)
        return self.lm_head(x) if head else x

    def loss(self, input_ids: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy -1/N sum_t log p(target_t | input_<=t); ``IGNORE_INDEX`` targets skipped."""
        return self(input_ids, targets=targets)

    def sequence_log_prob(self, input_ids: Tensor) -> Tensor:
        """log p(x_2..x_T | x_1) = sum_t log p(x_t | x_<t), by the chain rule; one value per row."""
        log_probs = self(input_ids[:, :-1]).float().log_softmax(dim=-1)
        return log_probs.gather(-1, input_ids[:, 1:, None]).squeeze(-1).sum(dim=-1)

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None) -> KVCache:
        c = self.config
        p = self.lm_head.weight
        return KVCache(c.n_layer, batch, c.n_kv_head, max_len, c.head_dim, dtype or p.dtype, p.device)

    def num_params(self, matmul_only: bool = False) -> int:
        """Parameters counted once (tied weights are shared).

        ``matmul_only`` leaves out the embedding lookups (no FLOPs) but keeps the output head, which is a
        matmul even when it shares its weight with the token embedding.
        """
        n = sum(p.numel() for p in self.parameters())
        if matmul_only:
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.tok_emb.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6N for the matmuls plus 12·L·H·Q·T for attention (PaLM, App. B)."""
        c = self.config
        return 6 * self.num_params(matmul_only=True) + 12 * c.n_layer * c.n_head * c.head_dim * seq_len
