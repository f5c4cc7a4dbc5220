"""``lmforge convert``: transformers checkpoint <-> lmforge model folder."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint from/to Hugging Face transformers")
    way = p.add_mutually_exclusive_group(required=True)
    way.add_argument(
        "--from-hf", metavar="HF_DIR", help="a local transformers folder (GPT-2 or Llama family)"
    )
    way.add_argument("--to-hf", metavar="LMF_DIR", help="an lmforge model folder")
    p.add_argument("out_dir", help="where to write the converted model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmforge.hf.convert import from_hf, to_hf

    out = from_hf(args.from_hf, args.out_dir) if args.from_hf else to_hf(args.to_hf, args.out_dir)
    print(f"wrote {out}")
    return 0
