"""The BERT encoder: bidirectional self-attention over token + position + segment embeddings.

h_0 = LayerNorm(E[x_t] + P[t] + S[s_t]); each of n_layer post-norm blocks computes
h = Norm(h + Attn(h)); h = Norm(h + FFN(h)) with every position seeing every non-padding position. Two
heads sit on the final states: the masked-LM head p(x_t | x_masked) = softmax(LN(GELU(h_t W)) E^T + b)
(tied to the token embeddings) and the pooler tanh(h_[CLS] W_p), which sentence-level heads use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.config import ConfigError
from lmforge.models.layers import Block, FeedForward, MultiHeadAttention, attention_mask, gelu


@dataclass
class BertConfig:
    """Shape of a BERT-layout encoder (defaults: BERT-base)."""

    arch: Literal["bert"] = "bert"  # the registry's name for this family (models/registry.py)
    vocab_size: int = 30522
    max_seq_len: int = 512
    type_vocab_size: int = 2  # segments (sentence A / B)
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    d_ff: int | None = None  # default 4 d_model
    norm_eps: float = 1e-12
    gelu_approximate: Literal["none", "tanh"] = "none"
    dropout: float = 0.1
    init_std: float = 0.02
    pooler: bool = False  # tanh(W h_[CLS]): a sentence vector (BertModel checkpoints carry one)
    mlm_head: bool = True  # the masked-LM head (dense + GELU + LayerNorm, decoder tied to the embeddings)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_seq_len", "n_layer", "n_head", "d_model", "type_vocab_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ConfigError(f"model.d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


class MaskedLMHead(nn.Module):
    """logits = LayerNorm(GELU(h W + b)) E^T + b_vocab, E the (shared) token embedding matrix."""

    def __init__(self, c: BertConfig, embedding: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(c.d_model, c.d_model)
        self.norm = nn.LayerNorm(c.d_model, eps=c.norm_eps)
        self.embedding = embedding  # not a copy: the decoder weight is the embedding table
        self.bias = nn.Parameter(torch.zeros(c.vocab_size))
        self.approximate = c.gelu_approximate

    def forward(self, h: Tensor) -> Tensor:
        h = self.norm(F.gelu(self.dense(h), approximate=self.approximate))
        return F.linear(h, self.embedding.weight, self.bias)


class Bert(nn.Module):
    """Embeddings -> n_layer post-norm bidirectional blocks -> masked-LM logits (or hidden states)."""

    config_class = BertConfig

    def __init__(self, config: BertConfig):
        super().__init__()
        c = self.config = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = nn.Embedding(c.max_seq_len, c.d_model)
        self.type_emb = nn.Embedding(c.type_vocab_size, c.d_model)
        self.emb_norm = nn.LayerNorm(c.d_model, eps=c.norm_eps)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList([self._block() for _ in range(c.n_layer)])
        self.pooler = nn.Linear(c.d_model, c.d_model) if c.pooler else None
        self.mlm = MaskedLMHead(c, self.tok_emb) if c.mlm_head else None
        self.apply(self._init_weights)

    def _block(self) -> Block:
        c = self.config
        attn = MultiHeadAttention(c.d_model, c.n_head, c.n_head, c.head_dim, True, c.dropout, causal=False)
        mlp = FeedForward(c.d_model, c.d_ff, True, gelu(c.gelu_approximate), dropout=c.dropout)
        norm = lambda: nn.LayerNorm(c.d_model, eps=c.norm_eps)  # noqa: E731
        return Block(attn, mlp, norm(), norm(), norm_position="post")

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: Tensor,
        key_valid: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        *,
        head: bool = True,
    ) -> Tensor:
        """Masked-LM logits (B, T, vocab) for ``input_ids`` (B, T); with ``head=False`` the final hidden
        states (B, T, d_model), for task heads. ``key_valid`` (B, T): False at padding (never attended
        to); ``token_type_ids`` (B, T): the segment of each token (default all 0)."""
        t = input_ids.size(1)
        positions = torch.arange(t, device=input_ids.device)
        segments = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        x = self.tok_emb(input_ids) + self.pos_emb(positions) + self.type_emb(segments)
        x = self.drop(self.emb_norm(x))
        mask = None if key_valid is None else attention_mask(key_valid, t, causal=False)
        for block in self.blocks:
            x = block(x, mask=mask)
        if not head:
            return x
        if self.mlm is None:
            raise ValueError("this encoder has no masked-LM head (mlm_head=false): call it with head=False")
        return self.mlm(x)

    def pool(self, hidden: Tensor) -> Tensor:
        """The sentence vector tanh(W h_[CLS] + b) (the first position's state when there is no pooler)."""
        first = hidden[:, 0]
        return first if self.pooler is None else torch.tanh(self.pooler(first))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6N for the matmuls (embedding lookups excluded, the tied MLM
        decoder included when present) plus 12·L·d·T for attention (PaLM, App. B)."""
        c = self.config
        lookups = (c.max_seq_len + c.type_vocab_size) * c.d_model + (
            0 if self.mlm else c.vocab_size * c.d_model
        )
        return 6 * (self.num_params() - lookups) + 12 * c.n_layer * c.d_model * seq_len
