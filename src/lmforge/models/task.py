"""Task models: a pretrained backbone (an encoder or a decoder) with a small head on its hidden states.

Three heads, each one linear map on dropout(h):

- ``sequence`` classifies a whole text: logits = W · dropout(pool(h)) + b, (B, n_labels), where pool(h)
  is the encoder's sentence vector (``Bert.pool``: the pooler on h_[CLS], or h_[CLS] itself) or, for a
  decoder, the hidden state of the last non-padding token, the only position that has seen the whole text;
  or (``pooling: mean``, what sentence-embedding models such as all-MiniLM-L6-v2 were trained with) the
  mean of the non-padding hidden states;
- ``token`` labels every token: logits_t = W · dropout(h_t) + b, (B, T, n_labels) (NER's BIO tags);
- ``span`` scores every token as an answer's start and end: (B, T, 2), [..., 0] start, [..., 1] end
  (extractive QA, Devlin et al. 2019, §4.2).

The
backbone runs through its own ``forward(..., head=False)``, so DDP/FSDP hooks fire; its language-model
head is dropped (never used, and DDP would wait forever for its gradient).

A task model is a registry family (``arch: task``): ``save_model``/``load_model`` write and read a
fine-tuned folder like any other, its config.json holding the backbone's config and the label names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from lmforge.config import ConfigError
from lmforge.errors import LmforgeError
from lmforge.models import registry
from lmforge.models.bert import BertConfig
from lmforge.models.gpt import GPTConfig
from lmforge.models.io import check_state_dict, model_state_dict, read_model_config, read_safetensors
from lmforge.tokenizer.core import Tokenizer

BackboneConfig = BertConfig | GPTConfig
ENCODERS = ("bert",)  # backbone families that attend both ways (the rest are causal decoders)
UNUSED_HEADS = ("mlm.", "lm_head.", "pooler.")  # pretrained tensors a task model may leave behind
TEXT_FIELDS = ("text", "sentence", "content")  # text columns of labelled files (SST-2: sentence, content)


@dataclass
class TaskConfig:
    """A backbone and the head a task puts on it."""

    arch: Literal["task"] = "task"  # the registry's name for this family (models/registry.py)
    backbone: BertConfig | GPTConfig = field(default_factory=BertConfig)  # the model under the head
    head: Literal["sequence", "token", "span"] = "sequence"  # per text, per token, answer start/end
    labels: list[str] = field(default_factory=list)  # label names, in the order of the logits (span: none)
    pooling: Literal["auto", "cls", "last", "mean"] = "auto"  # auto: cls for encoders, last for decoders
    dropout: float = 0.1  # on the pooled vector, before the head

    def __post_init__(self) -> None:
        if len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"model.labels holds duplicates: {self.labels}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.pool == "cls" and not self.encoder:
            raise ConfigError("pooling=cls needs an encoder: a decoder's first token sees only itself")
        if self.encoder and self.backbone.pooler and not self.uses_pooler:
            raise ConfigError(
                f"head={self.head}, pooling={self.pooling} leaves the encoder's pooler unused: "
                "set model.backbone.pooler=false"
            )

    @property
    def uses_pooler(self) -> bool:
        """Whether the head reads the encoder's pooler (an unused one would stall DDP's gradients)."""
        return self.head == "sequence" and self.pool == "cls"

    @property
    def encoder(self) -> bool:
        return self.backbone.arch in ENCODERS

    @property
    def pool(self) -> Literal["cls", "last", "mean"]:
        """The pooling in use: ``auto`` resolved by the backbone's kind."""
        if self.pooling != "auto":
            return self.pooling
        return "cls" if self.encoder else "last"


class Head(nn.Module):
    """logits = W dropout(x) + b: one score per label from each vector x (pooled or per token)."""

    def __init__(self, d_model: int, n_labels: int, dropout: float, init_std: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(d_model, n_labels)
        nn.init.normal_(self.proj.weight, mean=0.0, std=init_std)
        nn.init.zeros_(self.proj.bias)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.proj(self.dropout(pooled))


def mean_valid(hidden: Tensor, key_valid: Tensor) -> Tensor:
    """(B, d): each row's mean hidden state over its non-padding positions."""
    weights = key_valid.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


def last_valid(hidden: Tensor, key_valid: Tensor) -> Tensor:
    """(B, d): each row's hidden state at its last non-padding position (any padding side)."""
    last = key_valid.size(1) - 1 - key_valid.flip(1).int().argmax(dim=1)
    return hidden[torch.arange(hidden.size(0), device=hidden.device), last]


class TaskModel(nn.Module):
    """A backbone's hidden states -> a task head's logits (B, n_labels)."""

    config_class = TaskConfig

    def __init__(self, config: TaskConfig):
        super().__init__()
        if config.head != "span" and len(config.labels) < 2:
            raise ConfigError(f"a {config.head} classifier needs at least 2 labels, got {config.labels}")
        self.config = c = config
        self.backbone = registry.build(c.backbone)
        if hasattr(self.backbone, "lm_head"):
            self.backbone.lm_head = None  # next-token logits are not needed; the hidden states are
        d = c.backbone.d_model
        outputs = 2 if c.head == "span" else len(c.labels)
        self.head = Head(d, outputs, c.dropout, c.backbone.init_std)

    def forward(self, input_ids: Tensor, key_valid: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """Logits for right-padded ``input_ids`` (B, T): (B, n_labels) for the sequence head, (B, T,
        n_labels) for the token head, (B, T, 2) for the span head; ``key_valid`` (B, T) is False at
        padding; ``token_type_ids`` (encoders only) the segment of each token."""
        if self.config.encoder:
            hidden = self.backbone(input_ids, key_valid, token_type_ids, head=False)
        else:
            hidden = self.backbone(input_ids, key_valid=key_valid, head=False)
        if self.config.head != "sequence":
            return self.head(hidden)
        pool = self.config.pool
        if pool == "cls":
            return self.head(self.backbone.pool(hidden))
        return self.head((mean_valid if pool == "mean" else last_valid)(hidden, key_valid))

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6N for the matmuls (embedding lookups excluded) plus 12·L·H·D·T for
        attention (PaLM, App. B)."""
        c = self.config.backbone
        lookups = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Embedding))
        matmuls = sum(p.numel() for p in self.parameters()) - lookups
        return 6 * matmuls + 12 * c.n_layer * c.n_head * c.head_dim * seq_len


def backbone_config(model_dir: str | Path, pooler: bool = True) -> BackboneConfig:
    """A pretrained model folder's config as a task model's backbone: an encoder loses its masked-LM
    head (and its pooler unless ``pooler``: the head reads it); a decoder's LM head goes in ``TaskModel``."""
    config = read_model_config(model_dir)
    if config.arch not in ("bert", "gpt"):
        raise LmforgeError(f"{model_dir}: a {config.arch!r} model; a task needs a bert or gpt backbone")
    if config.arch in ENCODERS:
        config = dataclasses.replace(config, mlm_head=False, pooler=config.pooler and pooler)
    return config


def load_backbone(model: TaskModel, model_dir: str | Path) -> None:
    """Load a pretrained folder's weights into ``model.backbone``, strictly: every backbone tensor must
    be there with its shape; only the heads the backbone dropped (``UNUSED_HEADS``) may be left over."""
    path = Path(model_dir) / "model.safetensors"
    expected = model_state_dict(model.backbone)
    state = {
        k: v for k, v in read_safetensors(path).items() if k in expected or not k.startswith(UNUSED_HEADS)
    }
    check_state_dict(expected, state, str(path))
    model.backbone.load_state_dict(state)


def encode(config: TaskConfig, tokenizer: Tokenizer, texts: list[str], max_len: int) -> list[list[int]]:
    """Token ids as the model reads them, at most ``max_len`` each: encoders [CLS] text [SEP], decoders
    text followed by eos when the tokenizer has one (the last token then always marks the end)."""
    if config.encoder:
        if tokenizer.cls_id is None or tokenizer.sep_id is None:
            raise LmforgeError("an encoder's tokenizer needs [CLS] and [SEP] tokens")
        start, end = [tokenizer.cls_id], [tokenizer.sep_id]
    else:
        start, end = [], [] if tokenizer.eos_id is None else [tokenizer.eos_id]
    room = max_len - len(start) - len(end)
    if room < 1:
        raise LmforgeError(f"max_len {max_len} leaves no room for text")
    return [start + ids[:room] + end for ids in tokenizer.encode_batch(texts)]


def pad(rows: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """(input_ids, key_valid), both (B, longest row): rows right-padded with ``pad_id``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    valid = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        valid[i, : len(r)] = True
    return ids, valid
