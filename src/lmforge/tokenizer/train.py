"""Training tokenizers: byte-level BPE for real corpora, character-level for tiny demos.

Both are plain Hugging Face ``tokenizers`` models, so they save as ``tokenizer.json`` and load unchanged
in ``transformers.PreTrainedTokenizerFast``. Byte-level BPE starts from the 256 byte symbols, so every
string (Chinese, emoji, control characters) encodes and decodes back exactly, with no unknown token.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from lmforge.errors import LmforgeError
from lmforge.tokenizer.core import Tokenizer

# Role -> token text. Ids follow this order (pad 0, bos 1, eos 2, unk 3), then any extra special tokens.
DEFAULT_SPECIALS = {
    "pad_token": "<|pad|>",
    "bos_token": "<|bos|>",
    "eos_token": "<|eos|>",
    "unk_token": "<|unk|>",
}


def _special_list(extra: Iterable[str]) -> list[str]:
    tokens = list(DEFAULT_SPECIALS.values())
    for tok in extra:
        if tok not in tokens:
            tokens.append(tok)
    return tokens


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    extra_special_tokens: Iterable[str] = (),
    min_frequency: int = 2,
    show_progress: bool = False,
) -> Tokenizer:
    """Learn a byte-level BPE vocabulary of ``vocab_size`` entries (specials and 256 bytes included)."""
    specials = _special_list(extra_special_tokens)
    floor = len(specials) + 256
    if vocab_size < floor:
        raise LmforgeError(
            f"vocab_size must be at least {floor} (256 bytes + {len(specials)} special tokens)"
        )
    backend = HFTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    backend.train_from_iterator(texts, trainer)
    return Tokenizer(backend, DEFAULT_SPECIALS)


def train_char(texts: Iterable[str], extra_special_tokens: Iterable[str] = ()) -> Tokenizer:
    """One id per distinct character seen (sorted, after the special tokens); others map to unk.

    Expressed as a ``WordLevel`` model over single-character pieces with a ``Fuse`` decoder, so it is a
    standard ``tokenizer.json`` like the BPE one.
    """
    specials = _special_list(extra_special_tokens)
    chars: set[str] = set()
    for text in texts:
        chars.update(text)
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(chars):
        vocab.setdefault(ch, len(vocab))
    backend = HFTokenizer(models.WordLevel(vocab, unk_token=DEFAULT_SPECIALS["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(specials)
    return Tokenizer(backend, DEFAULT_SPECIALS)
