"""Character-level Tiny Shakespeare on a small CPU: wall time to val loss 1.886, the reference recipe in
the reference implementation against lmforge's best recipe in lmforge, in the same run.

- ``reference``: nanoGPT's documented CPU recipe (its README's "I only have a macbook": 4 layers,
  4 heads, 128 dims, context 64, batch 12, no dropout, no biases, lr 1e-3 with 100 warmup iterations
  and cosine decay to 1e-4 at 2,000, AdamW betas (0.9, 0.99), weight decay 0.1, clipping at 1.0, an
  evaluation of 20 batches of each split every 250 iterations), run by the plain model and loop of
  ``_reference_gpt.py`` on nanoGPT's 65-character vocabulary and its random batches.
- ``lmforge``: ``configs/train/shakespeare-char-fast-cpu.yaml`` through ``lmforge``'s Trainer (its
  defaults for this machine: ``train/fast.py``).

Data: ``$LMFORGE_SHARED/data/tinyshakespeare/input.txt``, first 90 % train, last 10 % val. Each run
stops at its first evaluation with val loss <= 1.886 (the reference: at 2,000 iterations at the latest,
where its recipe ends; if it has not reached the target by then its time is a lower bound of its time
to the target, so the ratio printed is an upper bound). Wall time counts everything from building the
model to that evaluation (evaluations included; tokenizing the text excluded). Each final model is
then scored on the *whole* val split (context 64, every position), the same way for both. The runs
alternate, ``--repeats`` each; medians and ranges; goal (issue 14): lmforge <= 0.5x the reference.

    python benchmarks/shakespeare.py [--repeats 3] [--out benchmarks/shakespeare.json]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _reference_gpt import ReferenceGPT, optimizer, train_step
from _report import machine, summary, write_json
from lmforge.config import load_config
from lmforge.evaluate.perplexity import perplexity
from lmforge.tokenizer.shards import build_shards
from lmforge.tokenizer.train import train_char
from lmforge.train.config import TrainConfig
from lmforge.train.trainer import Trainer

TARGET, GOAL = 1.886, 0.5
SHARED = Path(os.environ.get("LMFORGE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
# nanoGPT's CPU recipe (config/train_shakespeare_char.py with the README's command-line overrides)
REF = dict(
    layers=4, heads=4, d=128, context=64, batch=12, lr=1e-3, min_lr=1e-4, warmup=100, iters=2000,
    beta2=0.99, weight_decay=0.1, eval_every=250, eval_iters=20,
)  # fmt: skip


def full_val_loss(score, val: torch.Tensor, context: int) -> float:
    """Mean next-character loss over the whole val split, in windows of ``context`` + 1 (every
    position scored once, with 0..context-1 characters before it as the model was trained)."""
    n = (len(val) - 1) // context
    x = val[: n * context].view(n, context)
    y = val[1 : n * context + 1].view(n, context)
    with torch.no_grad():
        sums = [float(score(x[i : i + 256], y[i : i + 256])) * len(x[i : i + 256]) for i in range(0, n, 256)]
    return sum(sums) / n


def run_reference(train: torch.Tensor, val: torch.Tensor, vocab: int) -> dict:
    """nanoGPT's CPU recipe in the reference implementation; stops at the first evaluation <= TARGET."""
    r = REF
    start = time.perf_counter()
    torch.manual_seed(1337)
    model = ReferenceGPT(vocab, r["context"], r["layers"], r["heads"], r["d"], bias=False)
    opt = optimizer(model, r["lr"], r["weight_decay"], (0.9, r["beta2"]))

    def batch(data: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.randint(len(data) - r["context"], (size,))
        x = torch.stack([data[j : j + r["context"]] for j in i.tolist()])
        y = torch.stack([data[j + 1 : j + 1 + r["context"]] for j in i.tolist()])
        return x, y

    def lr(it: int) -> float:
        if it < r["warmup"]:
            return r["lr"] * (it + 1) / (r["warmup"] + 1)
        ratio = (it - r["warmup"]) / (r["iters"] - r["warmup"])
        return r["min_lr"] + 0.5 * (1 + math.cos(math.pi * ratio)) * (r["lr"] - r["min_lr"])

    def estimate(data: torch.Tensor) -> float:
        model.eval()
        with torch.no_grad():
            loss = statistics.mean(float(model(*batch(data, r["batch"]))) for _ in range(r["eval_iters"]))
        model.train()
        return loss

    val_loss, it = math.inf, 0
    for it in range(r["iters"] + 1):
        if it % r["eval_every"] == 0:
            estimate(train)  # nanoGPT estimates both splits at each evaluation
            val_loss = estimate(val)
            if val_loss <= TARGET or it == r["iters"]:
                break
        for group in opt.param_groups:
            group["lr"] = lr(it)
        train_step(model, opt, *batch(train, r["batch"]))
    wall = time.perf_counter() - start
    full = full_val_loss(lambda x, y: model(x, y), val, r["context"])
    return {
        "recipe": "reference",
        "reached": val_loss <= TARGET,
        "wall_s": round(wall, 2),
        "steps": it,
        "tokens": it * r["batch"] * r["context"],
        "val_loss_at_stop": round(val_loss, 4),
        "val_loss_full_split": round(full, 4),
    }


def run_lmforge(shards: Path, out: Path, overrides: list[str]) -> dict:
    run = [f"data.shards={shards}", f"out_dir={out}", f"stop_at_val_loss={TARGET}", "progress=false"]
    cfg = load_config(TrainConfig, "train/shakespeare-char-fast-cpu", [*run, *overrides])
    start = time.perf_counter()
    trainer = Trainer(cfg)
    result = trainer.run()
    wall = time.perf_counter() - start
    full = perplexity(trainer.model, shards, "val", seq_len=cfg.data.seq_len, batch_size=64)
    return {
        "recipe": "lmforge",
        "reached": result["stopped"] == "val_target",
        "wall_s": round(wall, 2),
        "steps": result["step"],
        "tokens": result["tokens"],
        "val_loss_at_stop": round(result["val_loss"], 4),
        "val_loss_full_split": round(full["loss"], 4),
        "settings": trainer.settings,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(SHARED / "data" / "tinyshakespeare" / "input.txt"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).with_name("shakespeare.json")))
    ap.add_argument("overrides", nargs="*", help="key=value overrides applied to the lmforge recipe")
    args = ap.parse_args()
    text = Path(args.data).read_text(encoding="utf-8")
    chars = sorted(set(text))  # nanoGPT's character vocabulary
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    cut = int(0.9 * len(ids))
    runs = []
    with tempfile.TemporaryDirectory() as d:
        shards = Path(d) / "shards"
        build_shards([text], train_char([text]), shards, val_fraction=0.1, progress=False)
        for r in range(args.repeats):
            order = ("reference", "lmforge") if r % 2 == 0 else ("lmforge", "reference")
            for recipe in order:
                if recipe == "reference":
                    row = run_reference(ids[:cut], ids[cut:], len(chars))
                else:
                    row = run_lmforge(shards, Path(d) / f"lmforge-{r}", args.overrides)
                runs.append(row)
                print(
                    f"[{r}] {recipe:<9} {'reached' if row['reached'] else 'MISSED '} "
                    f"val {row['val_loss_at_stop']} (full split {row['val_loss_full_split']}) "
                    f"in {row['wall_s']:.1f} s, {row['steps']} steps",
                    flush=True,
                )
    stats = {}
    for recipe in ("reference", "lmforge"):
        rows = [x for x in runs if x["recipe"] == recipe]
        stats[recipe] = {
            "wall_s": summary([x["wall_s"] for x in rows]),
            "all_reached": all(x["reached"] for x in rows),
        }
    ratio = stats["lmforge"]["wall_s"]["median"] / stats["reference"]["wall_s"]["median"]
    bound = "" if stats["reference"]["all_reached"] else " (at most: the reference missed the target)"
    print(
        f"lmforge reaches val {TARGET} in {ratio:.2f}x the reference recipe's wall time{bound}; "
        f"goal <= {GOAL}x"
    )
    write_json(
        args.out,
        {
            "benchmark": "shakespeare_char",
            "target_val_loss": TARGET,
            "goal_ratio": GOAL,
            "ratio": round(ratio, 3),
            "reference_recipe": REF,
            "machine": machine("cpu"),
            "summary": stats,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
