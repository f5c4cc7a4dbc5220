"""``lmforge pretrain`` (one process, or many under torchrun) and ``lmforge demo``."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from lmforge.config import add_config_arguments, config_from_args, describe_config, presets_help
from lmforge.train.config import TrainConfig


@dataclass
class DemoConfig:
    """The demo's own keys; it passes every other ``key=value`` to its training config."""

    minutes: float = 3.0  # training time budget
    out: str = "runs/demo"  # folder for the tokenizer, shards, run, samples and summary
    seed: int = 1337  # seeds training and sampling


DEMO_KEYS = tuple(f.name for f in dataclasses.fields(DemoConfig))


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
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = f"{describe_config(TrainConfig)}\n\n{presets_help('', 'train')}"
    p.set_defaults(func=run_pretrain)

    d = sub.add_parser(
        "demo",
        help="tokenizer, shards, pretraining and samples on a built-in corpus",
        description="key=value settings other than the demo's own keys (listed below) go to its training\n"
        "config: the train/demo preset, keys as in `lmforge pretrain` (e.g. model.n_layer=2 max_steps=60).",
    )
    add_config_arguments(d, DemoConfig, ["minutes", "out", "seed"])
    d.set_defaults(func=run_demo)


def run_pretrain(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lmforge.config import load_config
    from lmforge.errors import LmforgeError
    from lmforge.train.config import TrainConfig

    overrides = list(args.overrides)
    if args.resume:
        if not Path(args.resume).is_dir():
            raise LmforgeError(f"--resume {args.resume}: no such run folder")
        saved = Path(args.resume) / "config.yaml"
        if args.config is None and not saved.is_file():
            raise LmforgeError(f"{args.resume}: no config.yaml; pass --config too")
        path = args.config or saved
        overrides.append(f"out_dir={args.resume}")
    elif args.config is None and not any(o.startswith("task.model=") for o in overrides):
        raise LmforgeError("pass --config FILE (or --resume RUN_DIR, or task.model=MODEL_DIR to train on)")
    else:
        path = args.config  # with task.model alone, the folder gives the model and the defaults the rest
    cfg = load_config(TrainConfig, path, overrides)
    summary, trainer = train(cfg, resume=bool(args.resume))
    if trainer.env.is_main:
        val = "".join(f", {k} {v:.4g}" for k, v in summary.items() if k.startswith("val_") and v is not None)
        print(f"step {summary['step']}: loss {summary['loss']:.4f}{val}; run folder {cfg.out_dir}")
    return 0


def train(cfg: TrainConfig, resume: bool):
    """Run the loop on ``cfg`` (the process group is left whatever happens); (summary, trainer)."""
    from lmforge.train.distributed import shutdown
    from lmforge.train.trainer import Trainer

    trainer = Trainer(cfg, resume=resume)
    try:
        return trainer.run(), trainer
    finally:
        shutdown(trainer.env)


def split_demo_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """The demo's own ``key=value`` settings, and the rest, which belong to its training config."""
    mine = [o for o in overrides if o.split("=", 1)[0].split(".")[0] in DEMO_KEYS]
    return mine, [o for o in overrides if o not in mine]


def run_demo(args: argparse.Namespace) -> int:
    from lmforge.config import ConfigError, load_config
    from lmforge.train.config import TrainConfig
    from lmforge.train.demo import run_demo as demo

    args.overrides, train_overrides = split_demo_overrides(args.overrides)
    cfg = config_from_args(DemoConfig, args)
    try:  # the demo loads this config only after building its tokenizer and shards: check it first
        load_config(TrainConfig, "train/demo", train_overrides)
    except ConfigError as e:
        raise ConfigError(f"{e} (the demo's own keys: {', '.join(DEMO_KEYS)})") from None
    demo(cfg.out, cfg.minutes, cfg.seed, train_overrides)
    return 0
