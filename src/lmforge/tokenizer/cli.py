"""``lmforge tokenizer train`` and ``lmforge shards``: text files -> a tokenizer -> token shards."""

from __future__ import annotations

import argparse
import os

from lmforge.config import Flag, add_config_arguments, config_from_args
from lmforge.tokenizer.config import ShardsConfig, TokenizerTrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    tok = sub.add_parser("tokenizer", help="train a tokenizer").add_subparsers(
        dest="tokenizer_command", required=True, metavar="<command>"
    )
    p = tok.add_parser(
        "train", help="train a byte-level BPE, WordPiece or character-level tokenizer on text/JSONL"
    )
    add_config_arguments(
        p,
        TokenizerTrainConfig,
        [
            Flag("input", many=True),
            "out",
            "vocab_size",
            "kind",
            "special",
            "min_frequency",
            "text_key",
            "overwrite",
        ],
    )
    p.set_defaults(func=run_train)

    s = sub.add_parser("shards", help="tokenize a corpus into binary token shards with a train/val split")
    add_config_arguments(
        s,
        ShardsConfig,
        [
            Flag("input", many=True),
            *("tokenizer", "out", "val_fraction", "workers", "shard_tokens", "text_key", "overwrite"),
        ],
    )
    s.set_defaults(func=run_shards)


def run_train(args: argparse.Namespace) -> int:
    from lmforge.atomic import atomic_directory
    from lmforge.tokenizer.sources import iter_corpus, list_inputs
    from lmforge.tokenizer.train import train_bpe, train_char, train_wordpiece

    cfg = config_from_args(TokenizerTrainConfig, args)
    texts = iter_corpus(list_inputs(cfg.input), cfg.text_key)
    if cfg.kind == "char":
        tokenizer = train_char(texts, cfg.special)
    else:
        learn = train_wordpiece if cfg.kind == "wordpiece" else train_bpe
        tokenizer = learn(texts, cfg.vocab_size, cfg.special, cfg.min_frequency, show_progress=True)
    with atomic_directory(cfg.out, cfg.overwrite) as tmp:
        tokenizer.save(tmp)
    print(f"{cfg.kind} tokenizer with {tokenizer.vocab_size} tokens -> {cfg.out}")
    return 0


def run_shards(args: argparse.Namespace) -> int:
    from lmforge.tokenizer.core import Tokenizer
    from lmforge.tokenizer.shards import build_shards
    from lmforge.tokenizer.sources import iter_corpus, list_inputs

    cfg = config_from_args(ShardsConfig, args)
    tokenizer = Tokenizer.load(cfg.tokenizer)
    docs = iter_corpus(list_inputs(cfg.input), cfg.text_key)
    workers = cfg.workers or os.cpu_count() or 1
    index = build_shards(
        docs, tokenizer, cfg.out, cfg.val_fraction, workers, cfg.shard_tokens, overwrite=cfg.overwrite
    )
    split = {name: sum(e - s for _, s, e in r) for name, r in index["splits"].items()}
    print(
        f"{index['documents']:,} documents, {index['tokens']:,} tokens ({index['dtype']}) in "
        f"{len(index['files'])} shard(s): train {split['train']:,}, val {split['val']:,} -> {cfg.out}"
    )
    return 0
