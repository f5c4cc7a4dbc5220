"""Typed config of ``lmforge convert``: which way, from where (the output folder is positional)."""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.config import ConfigError


@dataclass
class ConvertConfig:
    from_hf: str | None = None  # a local transformers folder (GPT-2 or Llama family) to import
    to_hf: str | None = None  # an lmforge model folder to export for transformers
    from_gguf: str | None = None  # a llama.cpp GGUF file (Llama family) to import, dequantized to fp32
    overwrite: bool = False  # write into a folder holding other files (only lmforge's files are replaced)

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.from_hf, self.to_hf, self.from_gguf)) != 1:
            raise ConfigError(
                "set exactly one of from_hf (--from-hf HF_DIR), to_hf (--to-hf LMF_DIR) "
                "and from_gguf (--from-gguf FILE.gguf)"
            )
