"""``lmforge eval <task>``: evaluation commands (perplexity on token shards for now)."""

from __future__ import annotations

import argparse

from lmforge.config import add_config_arguments, config_from_args
from lmforge.evaluate.config import PerplexityConfig


def register(sub: argparse._SubParsersAction) -> None:
    tasks = sub.add_parser("eval", help="evaluate a model").add_subparsers(
        dest="eval_command", required=True, metavar="<task>"
    )
    p = tasks.add_parser("perplexity", help="perplexity (exp of mean cross-entropy) on a shards split")
    p.add_argument(
        "model", help="a run folder (uses its exported model or last checkpoint) or a model folder"
    )
    add_config_arguments(
        p, PerplexityConfig, ["data", "split", "seq_len", "batch_size", "max_tokens", "device"]
    )
    p.set_defaults(func=run_perplexity)


def run_perplexity(args: argparse.Namespace) -> int:
    import json

    from lmforge.evaluate.perplexity import load_for_eval, perplexity

    cfg = config_from_args(PerplexityConfig, args)
    model, seq_len, tokenizer = load_for_eval(args.model, cfg.device)
    result = perplexity(
        model, cfg.data, cfg.split, cfg.seq_len or seq_len, cfg.batch_size, cfg.max_tokens, tokenizer
    )
    print(json.dumps(result, indent=2))
    return 0
