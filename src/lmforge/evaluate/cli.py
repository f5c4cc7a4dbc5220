"""``lmforge eval <task>``: evaluation commands (perplexity on token shards for now)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    tasks = sub.add_parser("eval", help="evaluate a model").add_subparsers(
        dest="eval_command", required=True, metavar="<task>"
    )
    p = tasks.add_parser("perplexity", help="perplexity (exp of mean cross-entropy) on a shards split")
    p.add_argument(
        "model", help="a run folder (uses its exported model or last checkpoint) or a model folder"
    )
    p.add_argument("--data", required=True, help="a shards folder written by `lmforge shards`")
    p.add_argument("--split", default="val")
    p.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="window length (default: the run's, else the model's context)",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=None, help="stop after scoring this many tokens")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run_perplexity)


def run_perplexity(args: argparse.Namespace) -> int:
    import json

    from lmforge.evaluate.perplexity import load_for_eval, perplexity

    model, seq_len = load_for_eval(args.model, args.device)
    result = perplexity(
        model, args.data, args.split, args.seq_len or seq_len, args.batch_size, args.max_tokens
    )
    print(json.dumps(result, indent=2))
    return 0
