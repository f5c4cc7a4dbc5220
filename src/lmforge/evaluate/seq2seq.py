"""``lmforge eval translate`` and ``lmforge eval summarize``: generate a target for every source of a file
of pairs with a trained encoder-decoder (beam search by default) and score the outputs against the
references: sacreBLEU's BLEU and chrF with their signatures (translation), ROUGE-1/2/L/Lsum with Porter
stemming (summarization). The report (JSON) and the outputs (one per line) are written beside the model
folder, i.e. in its run folder, or in ``out``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.atomic import atomic_file
from lmforge.config import ConfigError, require
from lmforge.device import pick_device
from lmforge.errors import LmforgeError
from lmforge.evaluate.overlap import bleu, chrf, rouge
from lmforge.evaluate.pairs import Pair, read_pairs
from lmforge.infer.sampling import GenerationConfig
from lmforge.infer.seq2seq import translate
from lmforge.models import io as model_io
from lmforge.models.seq2seq import Seq2Seq
from lmforge.tokenizer.core import Tokenizer


@dataclass
class Seq2SeqEvalConfig(GenerationConfig):
    """Settings of ``lmforge eval translate|summarize``: the decoding settings (beam search by default)
    plus the data and where the report goes."""

    data: str = ""  # required: the pairs to score (TSV, JSONL, or PREFIX for PREFIX.src / PREFIX.tgt)
    src: str = ""  # source language or field; "": the one the model was trained with
    tgt: list[str] = field(default_factory=list)  # reference field(s); []: the trained target
    columns: list[str] = field(default_factory=list)  # a TSV's column names ([]: src, tgt)
    where: list[str] = field(default_factory=list)  # keep records with field=value (WMT22: type=de2en)
    limit: int = 0  # score the first N pairs only (0: all)
    out: str = ""  # folder for the report; "": beside the model folder (its run folder)
    batch_size: int = 32  # sources decoded together (each with num_beams hypotheses)
    max_len: int | None = None  # source tokens; None: the length the model was trained with
    max_new_tokens: int = 0  # 0: the target length the model was trained with
    temperature: float = 0.0
    num_beams: int = 5
    bleu_tokenize: str = ""  # "": zh for a zh target, else 13a
    device: str = "auto"

    def __post_init__(self) -> None:
        require(self, "data")
        if self.max_new_tokens == 0:  # decided from the model: check the rest with a stand-in
            self.max_new_tokens = 1
            super().__post_init__()
            self.max_new_tokens = 0
        else:
            super().__post_init__()
        if self.batch_size < 1 or self.limit < 0:
            raise ConfigError("batch_size must be positive and limit >= 0")
        if any("=" not in w for w in self.where):
            raise ConfigError(f"where: expected field=value items, got {self.where}")


def load_seq2seq(path: str, device: str = "auto") -> tuple[Seq2Seq, Tokenizer, dict[str, Any]]:
    """The model of a model folder (or of the run folder that exported it), its tokenizer, and the task
    settings it was trained with."""
    from lmforge.evaluate.classify import model_folder

    folder = model_folder(path)
    model, tokenizer = model_io.load_model(folder, device=pick_device(device))
    if not isinstance(model, Seq2Seq):
        raise LmforgeError(f"{folder}: a {model.config.arch} model, not an encoder-decoder (seq2seq)")
    if tokenizer is None:
        raise LmforgeError(f"{folder}: the model folder has no tokenizer")
    meta = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("task", {})
    return model, tokenizer, meta


def read_eval_pairs(cfg: Seq2SeqEvalConfig, meta: dict[str, Any]) -> list[Pair]:
    src, tgt = cfg.src or meta.get("src", ""), cfg.tgt or [meta.get("tgt", "")]
    if not src or not all(tgt):
        raise ConfigError("name the source and target: src=... tgt=... (the model records none)")
    where = dict(w.split("=", 1) for w in cfg.where)
    pairs = read_pairs(cfg.data, src, tgt, cfg.columns or None, where or None)
    return pairs[: cfg.limit] if cfg.limit else pairs


def bleu_tokenizer(cfg_value: str, target: str) -> str:
    """sacreBLEU's ``zh`` tokenizer for a Chinese target (13a sees an unspaced sentence as one word)."""
    return cfg_value or ("zh" if target.split("-")[0].lower() in ("zh", "cmn") else "13a")


def evaluate_pairs(
    model: Seq2Seq, tokenizer: Tokenizer, pairs: list[Pair], cfg: Seq2SeqEvalConfig, task: str, meta: dict
) -> tuple[dict[str, Any], list[str]]:
    """The report (scores, settings, speed) and the generated outputs, in the pairs' order."""
    settings = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(GenerationConfig)}
    gen = GenerationConfig(
        **{**settings, "max_new_tokens": cfg.max_new_tokens or meta.get("max_target_len", 128)}
    )
    start = time.perf_counter()
    outputs = translate(
        model, tokenizer, [p.source for p in pairs], gen, cfg.batch_size, cfg.max_len or meta.get("max_len")
    )
    seconds = time.perf_counter() - start
    references = [list(p.references) for p in pairs]
    report: dict[str, Any] = {"pairs": len(pairs), "num_beams": gen.num_beams}
    report |= {"length_penalty": gen.length_penalty, "max_new_tokens": gen.max_new_tokens}
    if task == "translate":
        tokenize = bleu_tokenizer(cfg.bleu_tokenize, (cfg.tgt or [meta.get("tgt", "")])[0])
        b, c = bleu(outputs, references, tokenize), chrf(outputs, references)
        report |= {
            "bleu": b.score,
            "bleu_signature": b.signature,
            "chrf": c.score,
            "chrf_signature": c.signature,
        }
        report |= {"bleu_precisions": list(b.precisions), "brevity_penalty": b.brevity_penalty}
    else:
        scores = rouge(outputs, references)
        report |= {k: v.f1 for k, v in scores.items()}
        report["rouge_settings"] = "rouge_score, Porter stemming, F-measure, best of the references"
    report |= {"seconds": seconds, "sentences_per_s": len(pairs) / seconds}
    return report, outputs


def format_report(report: dict[str, Any]) -> str:
    if "bleu" in report:
        lines = [f"BLEU {report['bleu']:.2f}  chrF {report['chrf']:.2f}  ({report['pairs']} pairs)"]
        lines += [f"  {report['bleu_signature']}", f"  {report['chrf_signature']}"]
    else:
        names = ("rouge1", "rouge2", "rougeL", "rougeLsum")
        lines = ["  ".join(f"{n} {report[n]:.2f}" for n in names) + f"  ({report['pairs']} pairs)"]
    lines.append(f"  beams {report['num_beams']}, {report['sentences_per_s']:.1f} sentences/s")
    return "\n".join(lines)


def write_report(report: dict[str, Any], outputs: list[str], folder: Path, name: str) -> tuple[Path, Path]:
    """``name.json`` (the report) and ``name.txt`` (one output per line, newlines inside escaped)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / f"{name}.json", folder / f"{name}.txt"
    with atomic_file(paths[0]) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    with atomic_file(paths[1]) as tmp:
        tmp.write_text("".join(o.replace("\n", "\\n") + "\n" for o in outputs), encoding="utf-8")
    return paths
