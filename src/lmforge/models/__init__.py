"""Model families: ``gpt`` (decoder-only: GPT-2 and Llama), built from ``layers``."""

from lmforge.models.gpt import GPT, GPTConfig, preset

__all__ = ["GPT", "GPTConfig", "preset"]
