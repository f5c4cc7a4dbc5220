"""``lmforge tokenizer train`` and ``lmforge shards``: text files -> a tokenizer -> token shards."""

from __future__ import annotations

import argparse
import os


def register(sub: argparse._SubParsersAction) -> None:
    tok = sub.add_parser("tokenizer", help="train a tokenizer").add_subparsers(
        dest="tokenizer_command", required=True, metavar="<command>"
    )
    p = tok.add_parser("train", help="train a byte-level BPE (or character-level) tokenizer on text/JSONL")
    p.add_argument("--input", nargs="+", required=True, help=".txt/.md or .jsonl files (or folders), .gz ok")
    p.add_argument("--out", required=True, help="folder for tokenizer.json + tokenizer_config.json")
    p.add_argument("--vocab-size", type=int, default=16000)
    p.add_argument("--kind", choices=["bpe", "char"], default="bpe")
    p.add_argument("--special", action="append", default=[], help="extra special token (repeatable)")
    p.add_argument(
        "--min-frequency", type=int, default=2, help="BPE: merges seen fewer times are not learned"
    )
    p.add_argument("--text-key", default="text", help="JSONL field holding the text")
    p.set_defaults(func=run_train)

    s = sub.add_parser("shards", help="tokenize a corpus into binary token shards with a train/val split")
    s.add_argument("--input", nargs="+", required=True, help=".txt/.md or .jsonl files (or folders), .gz ok")
    s.add_argument("--tokenizer", required=True, help="a tokenizer folder (or an lmforge model folder)")
    s.add_argument("--out", required=True)
    s.add_argument("--val-fraction", type=float, default=0.005, help="tail of the token stream kept for val")
    s.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    s.add_argument("--shard-tokens", type=int, default=1 << 27, help="tokens per shard file")
    s.add_argument("--text-key", default="text", help="JSONL field holding the text")
    s.set_defaults(func=run_shards)


def run_train(args: argparse.Namespace) -> int:
    from lmforge.tokenizer.sources import iter_corpus, list_inputs
    from lmforge.tokenizer.train import train_bpe, train_char

    texts = iter_corpus(list_inputs(args.input), args.text_key)
    if args.kind == "char":
        tokenizer = train_char(texts, args.special)
    else:
        tokenizer = train_bpe(texts, args.vocab_size, args.special, args.min_frequency, show_progress=True)
    tokenizer.save(args.out)
    print(f"{args.kind} tokenizer with {tokenizer.vocab_size} tokens -> {args.out}")
    return 0


def run_shards(args: argparse.Namespace) -> int:
    from lmforge.tokenizer.core import Tokenizer
    from lmforge.tokenizer.shards import build_shards
    from lmforge.tokenizer.sources import iter_corpus, list_inputs

    tokenizer = Tokenizer.load(args.tokenizer)
    docs = iter_corpus(list_inputs(args.input), args.text_key)
    index = build_shards(docs, tokenizer, args.out, args.val_fraction, args.workers, args.shard_tokens)
    split = {name: sum(e - s for _, s, e in r) for name, r in index["splits"].items()}
    print(
        f"{index['documents']:,} documents, {index['tokens']:,} tokens ({index['dtype']}) in "
        f"{len(index['files'])} shard(s): train {split['train']:,}, val {split['val']:,} -> {args.out}"
    )
    return 0
