"""``lmforge pretrain`` (one process, or many under torchrun) and ``lmforge demo``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain a decoder on token shards (torchrun -m lmforge pretrain ... for data parallel)",
    )
    p.add_argument("--config", help="a YAML file or preset name (e.g. gpt2-small); optional with --resume")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="e.g. data.shards=shards/ max_steps=2000"
    )
    p.set_defaults(func=run_pretrain)

    d = sub.add_parser("demo", help="tokenizer, shards, pretraining and samples on a built-in corpus")
    d.add_argument("--minutes", type=float, default=3.0, help="training time budget")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--seed", type=int, default=1337)
    d.add_argument("overrides", nargs="*", metavar="key=value", help="training config overrides")
    d.set_defaults(func=run_demo)


def run_pretrain(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lmforge.config import load_config
    from lmforge.errors import LmforgeError
    from lmforge.train.config import TrainConfig
    from lmforge.train.distributed import shutdown
    from lmforge.train.trainer import Trainer

    overrides = list(args.overrides)
    if args.resume:
        saved = Path(args.resume) / "config.yaml"
        if args.config is None and not saved.is_file():
            raise LmforgeError(f"{args.resume}: no config.yaml; pass --config too")
        path = args.config or saved
        overrides.append(f"out_dir={args.resume}")
    elif args.config is None:
        raise LmforgeError("pass --config FILE (or --resume RUN_DIR)")
    else:
        path = args.config
    cfg = load_config(TrainConfig, path, overrides)
    trainer = Trainer(cfg, resume=bool(args.resume))
    try:
        summary = trainer.run()
    finally:
        shutdown(trainer.env)
    if trainer.env.is_main:
        val = (
            f", val loss {summary['val_loss']:.4f} (ppl {summary['val_ppl']:.2f})"
            if summary["val_loss"] is not None
            else ""
        )
        print(f"step {summary['step']}: loss {summary['loss']:.4f}{val}; run folder {cfg.out_dir}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from lmforge.train.demo import run_demo as demo

    demo(args.out, args.minutes, args.seed, args.overrides)
    return 0
