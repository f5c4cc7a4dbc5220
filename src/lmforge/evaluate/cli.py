"""``lmforge eval <task>``: evaluation commands (perplexity on token shards, text classification)."""

from __future__ import annotations

import argparse

from lmforge.config import add_config_arguments, config_from_args
from lmforge.evaluate.classify import ClassifyEvalConfig
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

    c = tasks.add_parser("classify", help="accuracy, macro-F1, per-class P/R/F1 and confusion matrix")
    c.add_argument("model", help="a fine-tuned model folder, or the run folder that exported it")
    add_config_arguments(c, ClassifyEvalConfig, ["data", "out", "batch_size", "max_len", "device"])
    c.set_defaults(func=run_classify)


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


def run_classify(args: argparse.Namespace) -> int:
    """Score the model on a labelled file; print the report and write it (JSON + PNG) beside the model
    folder, i.e. in its run folder, or in --out."""
    from pathlib import Path

    from lmforge.evaluate.classify import (
        check_labels,
        evaluate_examples,
        format_report,
        load_classifier,
        model_folder,
        read_examples,
        write_report,
    )

    cfg = config_from_args(ClassifyEvalConfig, args)
    model, tokenizer, max_len = load_classifier(args.model, cfg.device)
    examples = read_examples(cfg.data, cfg.text_field, cfg.label_field)
    check_labels(examples, model.config.labels, cfg.label_field)
    report = evaluate_examples(model, tokenizer, examples, cfg.max_len or max_len, cfg.batch_size)
    folder = model_folder(args.model)
    report = {"model": str(folder), "data": cfg.data, **report}
    name = "eval-classify-" + Path(cfg.data).name.split(".")[0]
    json_path, png = write_report(report, cfg.out or folder.resolve().parent, name)
    print(format_report(report))
    print(f"wrote {json_path} and {png}")
    return 0
