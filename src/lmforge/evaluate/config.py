"""Typed config of ``lmforge eval perplexity``."""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.config import ConfigError, require


@dataclass
class PerplexityConfig:
    data: str = ""  # required: a shards folder written by `lmforge shards`
    split: str = "val"  # the shards split to score
    seq_len: int | None = None  # window length; None: the run's training length, else the model's context
    batch_size: int = 8
    max_tokens: int | None = None  # stop after scoring this many tokens; None: the whole split
    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...

    def __post_init__(self) -> None:
        require(self, "data")
        if self.batch_size < 1 or (self.seq_len is not None and self.seq_len < 1):
            raise ConfigError("batch_size and seq_len must be positive")
