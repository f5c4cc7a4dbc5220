"""``lmforge finetune classify|ner|qa`` (a training run of the objective of that name) and ``lmforge
predict``."""

from __future__ import annotations

import argparse
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.config import (
    ConfigError,
    add_config_arguments,
    config_from_args,
    load_config,
    read_yaml,
    require,
)
from lmforge.train.config import TrainConfig

# Each task: its objective's name and what its data files hold.
TASKS = {
    "classify": "text classification: one label per text (TSV/CSV/JSONL)",
    "ner": "token classification: BIO tags per word (CoNLL columns), e.g. named entities",
    "qa": "extractive question answering: an answer span of a context (SQuAD JSON)",
    "translate": "translation with an encoder-decoder: source -> target text (TSV, JSONL, PREFIX.src/.tgt)",
    "summarize": "summarization with an encoder-decoder: document -> summary (JSONL, TSV)",
    "instruct": "instruction tuning of a decoder: chat conversations, loss on the answers (JSONL)",
}
# Fine-tuning's usual settings, for the keys that the --config file, key=value and flags leave unset.
FINETUNE_DEFAULTS: dict[str, Any] = {
    "model.arch": "task",
    "optim.lr": 5e-5,
    "optim.weight_decay": 0.01,
    "optim.beta2": 0.999,
    "optim.warmup_steps": 100,
    "batch_size": 32,
    "max_steps": 2000,
    "eval_every": 200,
    "ckpt_every": 1000,
}
# Per task, what differs from those: QA windows hold a question and a context (BERT's SQuAD setting).
# Encoder-decoders: from scratch unless --model, so a from-scratch learning rate, the paper's label
# smoothing 0.1 and Adam beta2 0.98 (give optim.lr=5e-5 or so when fine-tuning a pretrained --model).
SEQ2SEQ_DEFAULTS = {
    "model.arch": "seq2seq",
    "task.label_smoothing": 0.1,
    "optim.lr": 5e-4,
    "optim.beta2": 0.98,
    "optim.warmup_steps": 500,
}
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "qa": {"task.max_len": 384, "task.stride": 128},
    "translate": SEQ2SEQ_DEFAULTS,
    "summarize": {**SEQ2SEQ_DEFAULTS, "task.src": "dialogue", "task.tgt": "summary", "task.max_len": 512},
    # A pretrained decoder's own output layer; packed rows of 1024 tokens, so fewer of them per batch.
    "instruct": {"model.arch": "gpt", "task.max_len": 1024, "optim.lr": 2e-5, "batch_size": 8},
}
FLAGS = {
    "model": "task.model",
    "train": "task.train",
    "dev": "task.dev",
    "out": "out_dir",
    "src": "task.src",
    "tgt": "task.tgt",
}
PAIR_FLAGS = ("src", "tgt")  # translate and summarize only


@dataclass
class PredictConfig:
    """Settings of ``lmforge predict``."""

    text: list[str] = field(default_factory=list)  # required: the texts to label (repeat --text)
    top_k: int = 1  # labels shown per text, most probable first
    batch_size: int = 32
    max_len: int | None = None  # tokens per text; None: the length the model was fine-tuned with
    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...

    def __post_init__(self) -> None:
        require(self, "text")
        if self.top_k < 1 or self.batch_size < 1 or (self.max_len is not None and self.max_len < 3):
            raise ConfigError("top_k and batch_size must be positive, max_len at least 3")


def register(sub: argparse._SubParsersAction) -> None:
    tasks = sub.add_parser("finetune", help="fine-tune a pretrained model on a task").add_subparsers(
        dest="finetune_command", required=True, metavar="<task>"
    )
    defaults = textwrap.fill(
        " ".join(f"{k}={v}" for k, v in FINETUNE_DEFAULTS.items()),
        100,
        initial_indent="  ",
        subsequent_indent="  ",
    )
    for task, summary in TASKS.items():
        p = tasks.add_parser(
            task,
            help=summary,
            description=f"Fine-tune for {summary.split(':')[0]} through the training loop (objective="
            f"{task}; see docs/finetuning.md). Defaults for the keys left unset:\n{defaults}",
        )
        for flag, key in FLAGS.items():
            if flag not in PAIR_FLAGS or task in ("translate", "summarize"):
                p.add_argument(f"--{flag}", dest=f"set_{flag}", metavar=flag.upper(), help=f"sets {key}")
        p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
        add_config_arguments(p, TrainConfig)
        p.set_defaults(func=run_finetune, task=task)

    q = sub.add_parser("predict", help="label texts with a fine-tuned classifier")
    q.add_argument("model", help="a fine-tuned model folder, or the run folder that exported it")
    add_config_arguments(q, PredictConfig, ["text", "top_k", "batch_size", "max_len", "device"])
    q.set_defaults(func=run_predict)


def _keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys a nested mapping sets."""
    keys = []
    for name, value in tree.items():
        keys += _keys(value, f"{prefix}{name}.") if isinstance(value, dict) else [prefix + name]
    return keys


def finetune_config(
    path: str | None, overrides: list[str], values: dict[str, Any], task: str = "classify"
) -> TrainConfig:
    """The run's TrainConfig for ``task``: the file, then key=value, then flags; FINETUNE_DEFAULTS (and
    objective=task) fill what none of them set."""
    given = [
        *(_keys(read_yaml(path)) if path else []),
        *(o.split("=", 1)[0].strip() for o in overrides),
        *values,
    ]
    unset = [
        f"{key}={value}"
        for key, value in {"objective": task, **FINETUNE_DEFAULTS, **TASK_DEFAULTS.get(task, {})}.items()
        if not any(key == g or key.startswith(f"{g}.") or g.startswith(f"{key}.") for g in given)
    ]
    return load_config(TrainConfig, path, [*unset, *overrides], values)


def run_finetune(args: argparse.Namespace) -> int:
    from lmforge.errors import LmforgeError
    from lmforge.train.cli import train

    values = dict(getattr(args, "config_flags", {}))
    values |= {
        key: getattr(args, f"set_{flag}") for flag, key in FLAGS.items() if getattr(args, f"set_{flag}", None)
    }
    overrides, path = [*args.overrides, *getattr(args, "config_settings", [])], args.config
    if args.resume:
        if not (Path(args.resume) / "config.yaml").is_file() and path is None:
            raise LmforgeError(f"--resume {args.resume}: no run folder with a config.yaml there")
        path, values["out_dir"] = path or str(Path(args.resume) / "config.yaml"), args.resume
    cfg = finetune_config(path, overrides, values, args.task)
    summary, trainer = train(cfg, resume=bool(args.resume))
    if trainer.env.is_main:
        print(_summary_line(summary, trainer))
    return 0


def _summary_line(summary: dict[str, Any], trainer) -> str:
    p, monitor = trainer.progress, trainer.objective.monitor[0]
    line = f"step {summary['step']}: loss {summary['loss']:.4f}"
    dev = [
        f"{k.removeprefix('val_')} {v:.4f}"
        for k, v in summary.items()
        if k.startswith("val_") and v is not None
    ]
    if dev:
        line += ", dev " + ", ".join(dev)
    if trainer.objective.keep_best and p.best_step is not None:
        line += f"; best {monitor} {p.best_val:.4f} at step {p.best_step}"
    return f"{line}; model {summary['model_dir']}" if summary["model_dir"] else line


def run_predict(args: argparse.Namespace) -> int:
    from lmforge.evaluate.classify import load_classifier, predict_proba

    cfg = config_from_args(PredictConfig, args)
    model, tokenizer, max_len = load_classifier(args.model, cfg.device)
    probs = predict_proba(model, tokenizer, cfg.text, cfg.max_len or max_len, cfg.batch_size)
    labels = model.config.labels
    for text, p in zip(cfg.text, probs):
        top = p.topk(min(cfg.top_k, len(labels)))
        shown = [f"{labels[i]}\t{q:.4f}" for q, i in zip(top.values.tolist(), top.indices.tolist())]
        print("\t".join([*shown, text]))
    return 0
