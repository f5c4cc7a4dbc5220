"""``lmforge convert``: transformers checkpoint <-> lmforge model folder; GGUF file -> lmforge folder."""

from __future__ import annotations

import argparse

from lmforge.config import add_config_arguments, config_from_args
from lmforge.hf.config import ConvertConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint from/to Hugging Face transformers")
    p.add_argument("out_dir", help="where to write the converted model")
    add_config_arguments(p, ConvertConfig, ["from_hf", "to_hf", "from_gguf", "overwrite"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmforge.hf.convert import from_hf, to_hf
    from lmforge.hf.gguf import from_gguf

    cfg = config_from_args(ConvertConfig, args)
    convert, source = (from_hf, cfg.from_hf) if cfg.from_hf else (to_hf, cfg.to_hf)
    if cfg.from_gguf:
        convert, source = from_gguf, cfg.from_gguf
    out = convert(source, args.out_dir, cfg.overwrite)
    print(f"wrote {out}")
    return 0
