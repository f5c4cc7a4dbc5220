"""Translation and summarization from scratch on real data, on this CPU: train, then score the test sets.

    python benchmarks/seq2seq_results.py multi30k [--minutes 60]   # de->en, test_2016_flickr + WMT22 de->en
    python benchmarks/seq2seq_results.py tatoeba  [--minutes 20]   # en->zh, a fixed-seed test split
    python benchmarks/seq2seq_results.py dialogsum [--minutes 60]  # ROUGE vs the lead baseline
    python benchmarks/seq2seq_results.py multi30k --score-only     # re-score an existing run

Each task trains ``configs/transformer-small.yaml`` (a joint BPE learnt on the training pairs, the model
of the best dev score kept) through ``lmforge finetune``, records dev score vs wall-clock minutes from
the run's metrics.jsonl, then runs ``lmforge eval`` with beam 5 on the test sets. Figures are printed and
written to benchmarks/seq2seq_results.json (one entry per task, merged with what is there).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _report import machine, write_json

SHARED = Path(os.environ.get("LMFORGE_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"
HERE = Path(__file__).resolve().parent
OUT = HERE / "seq2seq_results.json"


def lmforge(*args: str) -> str:
    """Run the CLI (as a user would) and return its standard output."""
    cmd = [sys.executable, "-m", "lmforge.cli", *args]
    print("$ lmforge " + " ".join(args), flush=True)
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout


def curve(run: Path, metric: str) -> list[dict[str, float]]:
    """(minutes, step, dev metric) at each evaluation; minutes: the wall time of the last training record
    at or before that step (the evaluation runs right after it)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    points, elapsed = [], 0.0
    for r in rows:
        elapsed = r.get("elapsed_s", elapsed)
        if metric in r:
            points.append({"minutes": round(elapsed / 60, 1), "step": r["step"], metric: round(r[metric], 2)})
    return points


def train(task: str, run: Path, minutes: float, extra: list[str]) -> None:
    if (run / "model" / "config.json").is_file():
        print(f"{run}: trained already (delete it to train again)")
        return
    lmforge(
        "finetune", task, "--config", "transformer-small", "--out", str(run), f"max_minutes={minutes}", *extra
    )


def evaluate(label: str, task: str, run: Path, data: str, *settings: str) -> dict[str, Any]:
    """``lmforge eval`` into ``run/eval/label`` (its own folder: two settings on one file keep both
    reports and outputs) and its report."""
    from lmforge.evaluate.cli import report_name

    out = run / "eval" / label
    print(lmforge("eval", task, str(run), "--data", data, "--out", str(out), *settings))
    return json.loads((out / f"{report_name(task, data)}.json").read_text())


def multi30k(work: Path, minutes: float, score_only: bool) -> dict[str, Any]:
    d = SHARED / "translation" / "multi30k"
    run = work / "multi30k-de-en"
    if not score_only:
        train(
            "translate",
            run,
            minutes,
            ["--train", str(d / "train"), "--dev", str(d / "val"), "--src", "de", "--tgt", "en"],
        )
    test = {
        "beam5": evaluate("beam5", "translate", run, str(d / "test_2016_flickr")),
        "greedy": evaluate("greedy", "translate", run, str(d / "test_2016_flickr"), "--beams", "1"),
        "test_2017_flickr_beam5": evaluate("beam5", "translate", run, str(d / "test_2017_flickr")),
    }
    wmt = SHARED / "translation" / "wmt22" / "general-test.jsonl.gz"
    ood = evaluate(
        "beam5", "translate", run, str(wmt), "src=src", "tgt=[tgr]", "where=[type=de2en]", "max_len=128"
    )
    return {"run": str(run), "curve": curve(run, "val_bleu"), "test_2016_flickr": test, "wmt22_de_en": ood}


def tatoeba_split(work: Path) -> dict[str, Path]:
    """Tatoeba en-zh has no official split: 1,000 test and 1,000 dev pairs by a fixed seed, every copy
    of an English sentence on one side (lmforge.evaluate.pairs.split_pairs)."""
    from lmforge.evaluate.pairs import read_pairs, split_pairs

    pairs = read_pairs(str(SHARED / "translation" / "tatoeba-en-zh" / "cmn-eng.tsv.gz"), "en", "zh")
    rest, test = split_pairs(pairs, test_size=1000, seed=0)
    train, dev = split_pairs(rest, test_size=1000, seed=1)
    files = {}
    for name, part in (("train", train), ("dev", dev), ("test", test)):
        files[name] = work / f"tatoeba.{name}.tsv"
        files[name].write_text("".join(f"{p.source}\t{p.target}\n" for p in part), encoding="utf-8")
    return files


def tatoeba(work: Path, minutes: float, score_only: bool) -> dict[str, Any]:
    files = tatoeba_split(work)
    run = work / "tatoeba-en-zh"
    if not score_only:
        args = ["--train", str(files["train"]), "--dev", str(files["dev"]), "--src", "en", "--tgt", "zh"]
        train("translate", run, minutes, args)
    test = evaluate("beam5", "translate", run, str(files["test"]))
    sizes = {k: sum(1 for _ in v.open(encoding="utf-8")) for k, v in files.items()}
    return {"run": str(run), "split": sizes, "curve": curve(run, "val_bleu"), "test": test}


# Dialogues are long: 384 source positions, 96 target tokens, a warmup that ends early in the budget and
# an evaluation every 250 steps (a step is seconds here, not a fraction of one).
DIALOGSUM = [
    "task.max_len=384",
    "task.max_target_len=96",
    "model.max_seq_len=384",
    "optim.warmup_steps=150",
    "eval_every=250",
]


def lead(dialogue: str, words: int) -> str:
    """The lead baseline: the dialogue's first turns, cut to the reference's length in words."""
    return " ".join(dialogue.split()[:words])


def random_init(run: Path) -> Path:
    """The trained model's architecture, tokenizer and task settings with untrained weights (seed 0):
    what the training adds, measured on the same footing."""
    import torch

    from lmforge.models.io import load_model, save_model

    out = run.parent / f"{run.name}-random-init"
    if not (out / "model" / "config.json").is_file():
        trained, tokenizer = load_model(run / "model")
        torch.manual_seed(0)
        task = json.loads((run / "model" / "config.json").read_text())["task"]
        save_model(type(trained)(trained.config), tokenizer, out / "model", extra={"task": task})
    return out


def dialogsum(work: Path, minutes: float, score_only: bool) -> dict[str, Any]:
    from lmforge.evaluate.overlap import rouge

    d = SHARED / "summarization" / "dialogsum"
    train_file = next(p for p in (d / "dialogsum.train.jsonl.gz", d / "dialogsum.train.jsonl") if p.exists())
    run = work / "dialogsum"
    if not score_only:
        args = ["--train", str(train_file), "--dev", str(d / "dialogsum.dev.jsonl")]
        train(
            "summarize",
            run,
            minutes,
            [*args, *DIALOGSUM],
        )
    test_file = str(d / "dialogsum.test.jsonl")
    ours = evaluate("summary1", "summarize", run, test_file, "tgt=[summary1]", "no_repeat_ngram_size=3")
    refs3 = "tgt=[summary1,summary2,summary3]"
    multi = evaluate("3-references", "summarize", run, test_file, refs3, "no_repeat_ngram_size=3")
    untrained = evaluate(
        "summary1", "summarize", random_init(run), test_file, "tgt=[summary1]", "no_repeat_ngram_size=3"
    )
    rows = [json.loads(line) for line in Path(test_file).read_text().splitlines()]
    refs = [r["summary1"] for r in rows]
    baseline = rouge([lead(r["dialogue"], len(s.split())) for r, s in zip(rows, refs)], refs)
    return {
        "run": str(run),
        "curve": curve(run, "val_rougeL"),
        "test_summary1": ours,
        "test_3_references": multi,
        "lead_baseline_summary1": {k: round(v.f1, 2) for k, v in baseline.items()},
        "random_init_summary1": untrained,
    }


TASKS = {"multi30k": multi30k, "tatoeba": tatoeba, "dialogsum": dialogsum}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=TASKS)
    ap.add_argument("--minutes", type=float, default=60.0, help="training wall-clock budget")
    ap.add_argument("--work", type=Path, default=Path("/tmp/lmforge-seq2seq"), help="runs and splits")
    ap.add_argument("--score-only", action="store_true", help="score the existing run, do not train")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = TASKS[args.task](args.work, args.minutes, args.score_only)
    result |= {
        "minutes_budget": args.minutes,
        "wall_s": round(time.perf_counter() - start),
        "machine": machine("cpu"),
    }
    everything = json.loads(OUT.read_text()) if OUT.is_file() else {}
    everything[args.task] = result
    write_json(OUT, everything)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2)[:4000])


if __name__ == "__main__":
    main()
