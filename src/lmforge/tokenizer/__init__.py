"""Tokenizers: text <-> ids (``core.Tokenizer`` wraps a Hugging Face ``tokenizers`` model)."""

from lmforge.tokenizer.core import Tokenizer

__all__ = ["Tokenizer"]
