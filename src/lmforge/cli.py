"""``lmforge <stage> ...``: one command per pipeline stage.

Each stage owns a small ``cli.py`` with ``register(subparsers)``; its handler imports the heavy parts
(torch, transformers) only when that command runs, so ``lmforge --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lmforge.errors import LmforgeError

STAGE_CLIS = (
    "lmforge.data.cli",
    "lmforge.hf.cli",
    "lmforge.infer.cli",
    "lmforge.tokenizer.cli",
    "lmforge.train.cli",
    "lmforge.evaluate.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmforge", description="From raw web text to a served language model, one stage per command."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="<stage>")
    for name in STAGE_CLIS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LmforgeError as e:
        print(f"lmforge {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lmforge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
