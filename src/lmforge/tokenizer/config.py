"""Typed configs of ``lmforge tokenizer train`` and ``lmforge shards`` (options, defaults and help)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lmforge.config import ConfigError, require


@dataclass
class TokenizerTrainConfig:
    input: list[str] = field(default_factory=list)  # required: .txt/.md, .jsonl, .parquet files or folders
    out: str = ""  # required: folder for tokenizer.json + tokenizer_config.json
    vocab_size: int = 16000  # BPE/WordPiece: entries, (the 256 bytes and) the special tokens included
    # bpe: byte-level, for decoders; wordpiece: BERT's (uncased, with [CLS] [SEP] [MASK]), for encoders;
    # char: one id per distinct character seen
    kind: Literal["bpe", "wordpiece", "char"] = "bpe"
    special: list[str] = field(default_factory=list)  # extra special tokens
    min_frequency: int = 2  # BPE/WordPiece: merges/pieces seen fewer times are not learned
    text_key: str = "text"  # JSONL field / Parquet column holding the text
    overwrite: bool = False  # write into a folder holding other files (only lmforge's files are replaced)

    def __post_init__(self) -> None:
        require(self, "input", "out")


@dataclass
class ShardsConfig:
    input: list[str] = field(default_factory=list)  # required: .txt/.md, .jsonl, .parquet files or folders
    tokenizer: str = ""  # required: a tokenizer folder (or an lmforge model folder)
    out: str = ""  # required: the shards folder to write
    val_fraction: float = 0.005  # tail of the token stream kept for val
    workers: int = 0  # tokenizing processes; 0: one per CPU core
    shard_tokens: int = 1 << 27  # tokens per shard file
    text_key: str = "text"  # JSONL field / Parquet column holding the text
    overwrite: bool = False  # write into a folder holding other files (only lmforge's files are replaced)

    def __post_init__(self) -> None:
        require(self, "input", "tokenizer", "out")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.workers < 0 or self.shard_tokens < 1:
            raise ConfigError("workers must be >= 0 and shard_tokens >= 1")
