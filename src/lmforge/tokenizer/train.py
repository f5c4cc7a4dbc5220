"""Training tokenizers: byte-level BPE for real corpora, BERT's WordPiece for encoders, character-level
for tiny demos.

All are plain Hugging Face ``tokenizers`` models, so they save as ``tokenizer.json`` and load unchanged
in ``transformers.PreTrainedTokenizerFast``. Byte-level BPE starts from the 256 byte symbols, so every
string (Chinese, emoji, control characters) encodes and decodes back exactly, with no unknown token.
WordPiece is BERT's (uncased): text is lower-cased and accent-stripped, split at whitespace and
punctuation, and words become pieces, continuations marked ``##``; it has the [CLS], [SEP] and [MASK]
that masked-LM pretraining and the task heads use.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
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

BERT_SPECIALS = {  # BERT's names and ids (pad 0, unk 1, cls 2, sep 3, mask 4)
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}


def _special_list(extra: Iterable[str], roles: dict[str, str] = DEFAULT_SPECIALS) -> list[str]:
    tokens = list(roles.values())
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


def train_wordpiece(
    texts: Iterable[str],
    vocab_size: int,
    extra_special_tokens: Iterable[str] = (),
    min_frequency: int = 2,
    show_progress: bool = False,
) -> Tokenizer:
    """Learn an uncased BERT WordPiece vocabulary of ``vocab_size`` entries (specials included).

    transformers' tokenizer of the saved folder adds [CLS] ... [SEP] (and token types for pairs) as
    BERT's does; lmforge's ``encode`` gives the text's own pieces and its objectives add the markers."""
    specials = _special_list(extra_special_tokens, BERT_SPECIALS)
    if vocab_size <= len(specials):
        raise LmforgeError(f"vocab_size must exceed the {len(specials)} special tokens")
    backend = HFTokenizer(models.WordPiece(unk_token=BERT_SPECIALS["unk_token"]))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        show_progress=show_progress,
    )
    backend.train_from_iterator(texts, trainer)
    cls, sep = BERT_SPECIALS["cls_token"], BERT_SPECIALS["sep_token"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, backend.token_to_id(cls)), (sep, backend.token_to_id(sep))],
    )
    return Tokenizer(backend, BERT_SPECIALS)
