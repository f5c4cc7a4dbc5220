"""Zero-shot benchmarks scored by log-likelihood, with lm-evaluation-harness's prompts and metrics.

Each task reads its standard file (the formats under ``$LMFORGE_SHARED/data/eval``, listed in
``TASKS``) into items of (context, choices, gold): the model scores every choice as the continuation
``" " + choice`` of the context (``evaluate/loglik.py``), and

    acc      = [argmax_k loglik_k == gold]
    acc_norm = [argmax_k loglik_k / len(choice_k in characters) == gold]

(the harness's multiple-choice rule: the length is the choice's characters, not its tokens). Winogrande
scores "partially": each option fills the blank of a different context and the same continuation (the
rest of the sentence) is scored after each. LAMBADA: acc = every token of the last word is the argmax,
perplexity = exp(-mean loglik) over passages. Standard errors are the harness's: the sample standard
deviation over items / sqrt(n).
"""

from __future__ import annotations

import bz2
import gzip
import json
import math
import re
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Literal

from torch import nn

from lmforge.atomic import atomic_file
from lmforge.config import ConfigError, require
from lmforge.errors import LmforgeError
from lmforge.evaluate.loglik import Score, encode_pair, score_requests
from lmforge.tokenizer.core import Tokenizer


@dataclass
class Item:
    contexts: list[str]  # one per choice (Winogrande), or one shared by every choice
    choices: list[str]  # the continuations, each scored as " " + choice (LAMBADA: the last word)
    gold: int
    lengths: list[int]  # the characters acc_norm divides by


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    opener = bz2.open if path.suffix == ".bz2" else gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        yield from enumerate(f, start=1)


def _json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    for number, line in _lines(path):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                raise LmforgeError(f"{path}:{number}: not a JSON line ({e.msg})") from None


def _field(path: Path, number: int, record: dict, name: str):
    if name not in record:
        raise LmforgeError(f"{path}:{number}: no field {name!r} (has {sorted(record)})")
    return record[name]


def hellaswag_preprocess(text: str) -> str:
    """The harness's HellaSwag cleaning: strip, ' [title]' -> '. ', drop other [tags], no double spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def read_hellaswag(folder: Path, limit: int | None = None) -> list[Item]:
    """``hellaswag_val_full.txt.bz2``: 6 lines per item (context, gold label, 4 endings)."""
    path = folder / "hellaswag" / "hellaswag_val_full.txt.bz2"
    lines = [line.rstrip("\n") for _, line in islice(_lines(path), None if limit is None else 6 * limit)]
    if len(lines) % 6:
        raise LmforgeError(f"{path}: {len(lines)} lines, not 6 per item")
    items = []
    for i in range(0, len(lines), 6):
        if not lines[i + 1].strip().isdigit():
            raise LmforgeError(f"{path}:{i + 2}: the gold label {lines[i + 1]!r} is not a number")
        endings = [hellaswag_preprocess(e) for e in lines[i + 2 : i + 6]]
        context = hellaswag_preprocess(lines[i])
        items.append(Item([context], endings, int(lines[i + 1]), [len(e) for e in endings]))
    return items


def _read_arc(name: str) -> Callable[[Path, int | None], list[Item]]:
    def read(folder: Path, limit: int | None = None) -> list[Item]:
        """ARC JSON lines {query: "Question: ...", choices, gold}; prompt query + "\\nAnswer:"."""
        path = folder / "arc" / f"{name}_test.jsonl"
        items = []
        for n, r in islice(_json_lines(path), limit):
            choices = _field(path, n, r, "choices")
            query, gold = _field(path, n, r, "query"), _field(path, n, r, "gold")
            items.append(Item([query + "\nAnswer:"], choices, gold, [len(c) for c in choices]))
        return items

    return read


def _labels(path: Path) -> list[str]:
    return [line.strip() for _, line in _lines(path) if line.strip()]


def read_piqa(folder: Path, limit: int | None = None) -> list[Item]:
    """PIQA valid.jsonl {goal, sol1, sol2} + valid-labels.lst; prompt "Question: goal\\nAnswer:"."""
    path = folder / "piqa" / "valid.jsonl"
    labels = _labels(folder / "piqa" / "valid-labels.lst")
    items = []
    records = list(islice(_json_lines(path), limit))
    for (n, r), label in zip(records, labels if limit is None else labels[: len(records)], strict=True):
        choices = [_field(path, n, r, "sol1"), _field(path, n, r, "sol2")]
        context = f"Question: {_field(path, n, r, 'goal')}\nAnswer:"
        items.append(Item([context], choices, int(label), [len(c) for c in choices]))
    return items


def read_winogrande(folder: Path, limit: int | None = None) -> list[Item]:
    """WinoGrande dev.jsonl {sentence with one "_", option1, option2, answer "1"|"2"}: each option fills
    the blank (its own context); the continuation is the rest of the sentence."""
    path = folder / "winogrande" / "dev.jsonl"
    items = []
    for n, r in islice(_json_lines(path), limit):
        sentence = _field(path, n, r, "sentence")
        if "_" not in sentence:
            raise LmforgeError(f"{path}:{n}: the sentence has no '_' blank")
        blank = sentence.index("_")
        options = [_field(path, n, r, "option1"), _field(path, n, r, "option2")]
        rest = sentence[blank + 1 :].strip()
        contexts = [sentence[:blank] + option for option in options]
        items.append(Item(contexts, [rest, rest], int(_field(path, n, r, "answer")) - 1, [len(rest)] * 2))
    return items


def read_lambada(folder: Path, limit: int | None = None) -> list[Item]:
    """LAMBADA (OpenAI's) JSON lines {context, continuation}: the passage split at its last space."""
    path = folder / "lambada" / "lambada_openai.jsonl.gz"
    items = []
    for n, r in islice(_json_lines(path), limit):
        word = _field(path, n, r, "continuation")
        items.append(Item([_field(path, n, r, "context")], [word], 0, [len(word)]))
    return items


# each reads a task's file (its first ``limit`` items, or all): task -> read(folder, limit=None)
TASKS: dict[str, Callable[[Path, int | None], list[Item]]] = {
    "hellaswag": read_hellaswag,
    "arc_easy": _read_arc("arc_easy"),
    "arc_challenge": _read_arc("arc_challenge"),
    "piqa": read_piqa,
    "winogrande": read_winogrande,
    "lambada": read_lambada,
}


def stderr(values: list[float]) -> float:
    """The harness's standard error of a mean: sample standard deviation / sqrt(n)."""
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan


def task_metrics(task: str, items: list[Item], logliks: list[list[float]], greedy: list[list[bool]]) -> dict:
    """acc (and acc_norm, except for Winogrande and LAMBADA; LAMBADA: perplexity) with standard errors,
    and each item's decision."""
    if task == "lambada":
        acc = [float(g[0]) for g in greedy]
        nll = -statistics.fmean(ll[0] for ll in logliks)
        return {"acc": statistics.fmean(acc), "acc_stderr": stderr(acc), "perplexity": math.exp(nll)}
    acc = [float(max(range(len(ll)), key=ll.__getitem__) == it.gold) for it, ll in zip(items, logliks)]
    out = {"acc": statistics.fmean(acc), "acc_stderr": stderr(acc)}
    if task != "winogrande":
        norm = [
            float(max(range(len(ll)), key=lambda k: ll[k] / it.lengths[k]) == it.gold)
            for it, ll in zip(items, logliks)
        ]
        out.update(acc_norm=statistics.fmean(norm), acc_norm_stderr=stderr(norm))
    return out


def score_items(
    model: nn.Module,
    tokenizer: Tokenizer,
    items: list[Item],
    batch_tokens: int = 4096,
    desc: str | None = None,
) -> list[list[Score]]:
    """Each item's choice scores: an item is one question of its choices' requests, so their shared
    context (Winogrande: the sentence before the blank) is computed once."""
    questions = [
        [encode_pair(tokenizer, c, " " + choice) for c, choice in zip(_contexts(it), it.choices)]
        for it in items
    ]
    return score_requests(model, questions, batch_tokens, desc)


def _contexts(item: Item) -> list[str]:
    return item.contexts if len(item.contexts) > 1 else item.contexts * len(item.choices)


def run_task(
    model, tokenizer, task: str, data: Path, limit: int | None = None, batch_tokens: int = 4096
) -> dict:
    """One task end to end: read, score, metrics; the result holds every item's log-likelihoods."""
    if task not in TASKS:
        raise LmforgeError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    items = TASKS[task](Path(data), limit)
    scores = score_items(model, tokenizer, items, batch_tokens, desc=task)
    logliks = [[s.loglik for s in question] for question in scores]
    greedy = [[s.greedy for s in question] for question in scores]
    return {
        "task": task,
        "items": len(items),
        **task_metrics(task, items, logliks, greedy),
        "per_item": [
            {"gold": it.gold, "loglik": ll, "greedy": g, "tokens": [s.tokens for s in q]}
            for it, ll, g, q in zip(items, logliks, greedy, scores)
        ],
    }


@dataclass
class SuiteConfig:
    data: str = ""  # required: a folder laid out as $LMFORGE_SHARED/data/eval (hellaswag/, arc/, ...)
    tasks: str = ",".join(TASKS)  # comma-separated; also "wikitext" (word perplexity, bits per byte)
    wikitext: str | None = None  # wikitext's file (wiki.test.raw); default: <data>/wikitext2/wiki.test.raw
    limit: int | None = None  # the first N items of each task (a quick look)
    batch_tokens: int = 4096  # tokens (contexts + choices) scored per forward
    out: str | None = None  # where the reports go; default: beside the model folder
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16", "float64"] = "auto"  # auto: bf16 on CUDA
    matmul: Literal["auto", "fp32", "bf16x6", "bf16x3"] = "auto"  # fp32 matmuls on AMX: bf16x6 (auto), bf16x3

    def __post_init__(self) -> None:
        require(self, "data")
        unknown = [t for t in self.task_list if t not in TASKS and t != "wikitext"]
        if unknown:
            known = ", ".join([*TASKS, "wikitext"])
            raise ConfigError(f"tasks: unknown {', '.join(unknown)}; expected some of {known}")
        if self.batch_tokens < 1 or (self.limit is not None and self.limit < 1):
            raise ConfigError("batch_tokens and limit must be positive")

    @property
    def task_list(self) -> list[str]:
        return [t.strip() for t in self.tasks.split(",") if t.strip()]


def format_table(results: list[dict]) -> str:
    """One line per task: items, acc ± stderr, acc_norm ± stderr (or LAMBADA's perplexity)."""
    lines = [f"{'task':<14} {'items':>6}  {'acc':>15}  {'acc_norm / ppl':>15}"]
    for r in results:
        if r["task"] == "wikitext":
            ppl, bpb = r["word_perplexity"], r["bits_per_byte"]
            lines.append(f"{'wikitext':<14} {r['items']:>6}  word ppl {ppl:.2f}, bits/byte {bpb:.4f}")
            continue
        acc = f"{100 * r['acc']:6.2f} ± {100 * r['acc_stderr']:5.2f}"
        if "acc_norm" in r:
            other = f"{100 * r['acc_norm']:6.2f} ± {100 * r['acc_norm_stderr']:5.2f}"
        else:
            other = f"{r['perplexity']:15.2f}" if "perplexity" in r else ""
        lines.append(f"{r['task']:<14} {r['items']:>6}  {acc:>15}  {other:>15}")
    return "\n".join(lines)


def write_suite(results: list[dict], out_dir: Path, model: str) -> Path:
    """eval-<task>.json per task (with every item), eval-suite.json (the figures) and eval-suite.png (a
    bar chart of acc and acc_norm), each written atomically; returns the summary's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    for r in results:
        with atomic_file(out_dir / f"eval-{r['task']}.json") as tmp:
            tmp.write_text(json.dumps({"model": model, **r}, indent=1), encoding="utf-8")
    figures = [{k: v for k, v in r.items() if k != "per_item"} for r in results]
    with atomic_file(out_dir / "eval-suite.json") as tmp:
        tmp.write_text(json.dumps({"model": model, "results": figures}, indent=2), encoding="utf-8")
    fig, ax = plt.subplots(figsize=(1.6 * len(results) + 2, 3.5))
    x = range(len(results))
    ax.bar([i - 0.2 for i in x], [100 * r.get("acc", math.nan) for r in results], 0.4, label="acc")
    ax.bar([i + 0.2 for i in x], [100 * r.get("acc_norm", math.nan) for r in results], 0.4, label="acc_norm")
    ax.set_xticks(list(x), [r["task"] for r in results])
    ax.set_ylabel("%")
    ax.set_title(f"zero-shot: {model}")
    ax.legend()
    fig.tight_layout()
    with atomic_file(out_dir / "eval-suite.png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out_dir / "eval-suite.json"
