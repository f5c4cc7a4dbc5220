"""Text classification outside training: labelled examples from TSV/CSV/JSONL files, a fine-tuned task
model's label probabilities, and the report ``lmforge eval classify`` prints and writes (accuracy,
macro-F1, per-class precision/recall/F1, the confusion matrix as JSON and PNG).

The readers live here rather than in ``tasks/`` because evaluation needs no trainer: fine-tuning
(``tasks/classify.py``) reads its train and dev files with the same functions, so a file that trains
also evaluates, and a bad line is reported the same way (file:line: field).
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from lmforge.atomic import atomic_file
from lmforge.config import ConfigError, require
from lmforge.device import pick_device
from lmforge.errors import LmforgeError
from lmforge.evaluate.metrics import (
    accuracy,
    class_counts,
    confusion_matrix,
    macro_f1,
    plot_confusion_matrix,
    prf,
)
from lmforge.models import io as model_io
from lmforge.models.task import TEXT_FIELDS, TaskModel, encode, pad
from lmforge.tokenizer.core import Tokenizer


@dataclass
class TaskEvalConfig:
    """Settings every ``lmforge eval <task>`` of a fine-tuned model shares."""

    data: str = ""  # required: the labelled file to score
    out: str = ""  # folder for the report; "": beside the model folder (its run folder)
    batch_size: int = 32
    max_len: int | None = None  # tokens per example; None: the length the model was fine-tuned with
    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...

    def __post_init__(self) -> None:
        require(self, "data")
        if self.batch_size < 1 or (self.max_len is not None and self.max_len < 3):
            raise ConfigError("batch_size must be positive and max_len at least 3")


@dataclass
class ClassifyEvalConfig(TaskEvalConfig):
    """Settings of ``lmforge eval classify``: data is .tsv, .csv (header row) or .jsonl, plain or .gz;
    the report is JSON + a confusion-matrix PNG."""

    text_field: list[str] = field(default_factory=lambda: list(TEXT_FIELDS))  # the first a file has
    label_field: str = "label"


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    where: str  # file:line, for messages


# --- reading labelled files -----------------------------------------------------------------------------


def open_text(path: Path) -> TextIO:
    """A text file, gzip-decompressed when its name ends in .gz (a BOM is dropped)."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


def _kind(path: Path) -> str:
    name = path.name.removesuffix(".gz")
    kind = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if kind not in ("tsv", "csv", "jsonl"):
        raise LmforgeError(f"{path}: expected a .tsv, .csv or .jsonl file (optionally .gz)")
    return kind


def _table_records(path: Path, kind: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, {column: value}) for each row after the header; TSV is read without quoting (SST-2's
    texts hold bare quotes), CSV as RFC 4180."""
    with open_text(path) as f:
        quoting = csv.QUOTE_NONE if kind == "tsv" else csv.QUOTE_MINIMAL
        reader = csv.reader(f, delimiter="\t" if kind == "tsv" else ",", quoting=quoting)
        header = next(reader, None)
        if not header:
            return
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise LmforgeError(
                    f"{path}:{reader.line_num}: {len(row)} fields, the header has {len(header)}"
                )
            yield reader.line_num, dict(zip(header, row))


def json_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open_text(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise LmforgeError(f"{path}:{line_no}: not JSON ({e})") from None
            if not isinstance(record, dict):
                raise LmforgeError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
            yield line_no, record


def _example(record: dict[str, Any], where: str, text_fields: list[str], label_field: str) -> Example:
    name = next((f for f in text_fields if f in record), None)
    if name is None:
        raise LmforgeError(f"{where}: no text field (looked for {', '.join(text_fields)}; set text_field)")
    text, label = record[name], record.get(label_field)
    if not isinstance(text, str):
        raise LmforgeError(f"{where}: field {name!r}: expected a string, got {text!r}")
    if isinstance(label, bool) or not isinstance(label, str | int) or str(label).strip() == "":
        raise LmforgeError(
            f"{where}: field {label_field!r}: expected a label (a string or an integer), got {label!r}"
        )
    return Example(text, str(label).strip(), where)


def read_examples(
    path: str | Path, text_fields: list[str] | tuple[str, ...] = TEXT_FIELDS, label_field: str = "label"
) -> list[Example]:
    """The labelled examples of a .tsv/.csv (header row) or .jsonl file, plain or .gz. The text is the
    first of ``text_fields`` the record has; labels are strings (JSON integers too: 1 -> "1"). A bad line
    is an error naming file:line and the field."""
    p = Path(path)
    if not p.is_file():
        raise LmforgeError(f"{p}: no such file")
    kind = _kind(p)
    records = json_records(p) if kind == "jsonl" else _table_records(p, kind)
    examples = [_example(r, f"{p}:{line}", list(text_fields), label_field) for line, r in records]
    if not examples:
        raise LmforgeError(f"{p}: no examples")
    return examples


def _label_order(label: str) -> tuple[int, int | str]:
    """Integers in numeric order (2 before 10), then the other labels alphabetically."""
    return (0, int(label)) if label.lstrip("-").isdigit() else (1, label)


def label_set(examples: list[Example], given: list[str] | None = None) -> list[str]:
    """``given`` (checked against the examples), else the examples' labels sorted."""
    if given:
        check_labels(examples, given)
        return list(given)
    return sorted({e.label for e in examples}, key=_label_order)


def check_labels(examples: list[Example], labels: list[str], label_field: str = "label") -> None:
    """Every example's label must be one the model knows."""
    known = set(labels)
    for e in examples:
        if e.label not in known:
            raise LmforgeError(
                f"{e.where}: field {label_field!r}: {e.label!r} is not one of the labels {labels}"
            )


# --- the model's predictions ---------------------------------------------------------------------------


def model_folder(path: str | Path) -> Path:
    """The model folder ``path`` names: itself, or the ``model/`` a run folder exported."""
    p = Path(path)
    if (p / "model" / "config.json").is_file():
        return p / "model"
    if (p / "config.yaml").is_file():
        raise LmforgeError(f"{p}: this run has exported no model yet (it writes {p / 'model'})")
    return p


def load_classifier(path: str | Path, device: str = "auto") -> tuple[TaskModel, Tokenizer, int]:
    """A fine-tuned task model from its folder or its run folder, its tokenizer, and the input length it
    was fine-tuned with (the backbone's context for a folder that does not say)."""
    folder = model_folder(path)
    model, tokenizer = model_io.load_model(folder, device=pick_device(device))
    if not isinstance(model, TaskModel):
        raise LmforgeError(f"{folder}: a {model.config.arch} model, not a fine-tuned classifier (arch task)")
    if tokenizer is None:
        raise LmforgeError(f"{folder}: no tokenizer in the model folder")
    meta = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return model, tokenizer, meta.get("task", {}).get("max_len", model.config.backbone.max_seq_len)


@torch.no_grad()
def predict_proba(
    model: TaskModel, tokenizer: Tokenizer, texts: list[str], max_len: int, batch_size: int = 32
) -> torch.Tensor:
    """p(label | text), (len(texts), n_labels) on the CPU. Texts of similar length share a batch (sorted
    by length, then put back in order), so little compute goes to padding."""
    rows = encode(model.config, tokenizer, texts, max_len)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    device = next(model.parameters()).device
    probs = torch.empty(len(rows), len(model.config.labels))
    model.eval()
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        ids, valid = pad([rows[i] for i in index], tokenizer.pad_id or 0)
        probs[index] = model(ids.to(device), valid.to(device)).float().softmax(dim=-1).cpu()
    return probs


def classification_report(gold: list[str], pred: list[str], labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix (rows gold)."""
    matrix = confusion_matrix(gold, pred, labels)
    counts = class_counts(matrix, labels)
    per_class = {
        label: {**prf(c)._asdict(), "support": sum(matrix[i])} for i, (label, c) in enumerate(counts.items())
    }
    return {
        "examples": len(gold),
        "accuracy": accuracy(gold, pred),
        "macro_f1": macro_f1(counts),
        "per_class": per_class,
        "labels": list(labels),
        "confusion_matrix": matrix,
    }


def evaluate_examples(
    model: TaskModel, tokenizer: Tokenizer, examples: list[Example], max_len: int, batch_size: int = 32
) -> dict[str, Any]:
    """The classification report of ``model`` on labelled ``examples`` (labels checked with
    ``check_labels`` first, for a message naming the line)."""
    labels = model.config.labels
    probs = predict_proba(model, tokenizer, [e.text for e in examples], max_len, batch_size)
    pred = [labels[i] for i in probs.argmax(dim=-1).tolist()]
    return classification_report([e.label for e in examples], pred, labels)


def format_report(report: dict[str, Any]) -> str:
    """The report as a table a terminal shows."""
    labels, n = report["labels"], report["examples"]
    width = max(8, *(len(label) for label in labels))
    lines = [
        f"accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}  ({n} examples)",
        "",
        f"{'label':<{width}}  precision  recall      f1  support",
    ]
    for label, c in report["per_class"].items():
        lines.append(
            f"{label:<{width}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:6.4f}  {c['support']:7d}"
        )
    lines += [
        "",
        "confusion matrix (rows: gold, columns: predicted)",
        " " * width + "".join(f"{x:>8}" for x in labels),
    ]
    lines += [
        f"{g:<{width}}" + "".join(f"{n:>8d}" for n in row)
        for g, row in zip(labels, report["confusion_matrix"])
    ]
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """``name``.json and ``name``.png (the confusion matrix) in ``out_dir``, each written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2), encoding="utf-8")
    title = f"{name}: accuracy {report['accuracy']:.3f}, macro-F1 {report['macro_f1']:.3f}"
    png = plot_confusion_matrix(report["confusion_matrix"], report["labels"], out / f"{name}.png", title)
    return out / f"{name}.json", png
