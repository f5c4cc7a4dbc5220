"""``lmforge <stage> ...``: one command per pipeline stage.

Each stage owns a small ``cli.py`` with ``register(subparsers)``; its handler imports the heavy parts
(torch, transformers) only when that command runs, so ``lmforge --help`` stays instant. Every stage takes
the same style: ``--config FILE_OR_PRESET``, ``key=value`` settings anywhere on the line, and short flags
for the settings typed most (``lmforge.config.add_config_arguments``).
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
    "lmforge.tasks.cli",
    "lmforge.serve.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmforge", description="From raw web text to a served language model, one stage per command."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="<stage>")
    for name in STAGE_CLIS:
        importlib.import_module(name).register(sub)
    sub.add_parser("presets", help="list the bundled config presets (what --config NAME takes)").set_defaults(
        func=print_presets
    )
    return parser


def print_presets(args: argparse.Namespace) -> int:
    from lmforge.config import presets_help

    print(presets_help())
    return 0


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, letting ``key=value`` settings also follow flags: argparse alone fills a positional list
    from one run of words only, so it would reject ``t=0`` in ``generate m --prompt x t=0``."""
    args, extra = parser.parse_known_args(argv)
    if not extra:
        return args
    if not hasattr(args, "overrides") or any(a.startswith("-") for a in extra):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
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
