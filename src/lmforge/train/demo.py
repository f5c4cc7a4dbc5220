"""``lmforge demo``: the whole path on a corpus every Python installation has, in a few CPU minutes.

The corpus is CPython's reference manual as shipped in ``pydoc_data.topics`` (the text behind
``help("if")`` etc.; ~465k characters of English technical prose, PSF licence), one document per topic.
The demo trains a byte-level BPE tokenizer on it, writes token shards, pretrains the ``train/demo``
preset for the time budget, reports val perplexity and prints samples. Everything lands in one folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import torch

from lmforge.config import load_config
from lmforge.train.config import TrainConfig
from lmforge.train.trainer import Trainer

VOCAB_SIZE = 2048
VAL_FRACTION = 0.05
PROMPTS = ["The", "In Python,", "A class", "If the"]


def demo_corpus() -> list[str]:
    """The reference manual's topics, in a fixed order (sorted by topic name)."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    return [topics[name].strip() for name in sorted(topics) if topics[name].strip()]


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _stamps(out: Path) -> dict[str, str]:
    """What inputs each folder of an earlier demo in ``out`` was built from (``.demo-inputs.json``)."""
    try:
        return json.loads((out / STAMPS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _cached(folder: Path, fingerprint: str) -> bool:
    """``folder`` was built by an earlier demo from the same inputs (its stamp matches)."""
    return folder.is_dir() and _stamps(folder.parent).get(folder.name) == fingerprint


def _stamp(folder: Path, fingerprint: str) -> None:
    stamps = {**_stamps(folder.parent), folder.name: fingerprint}
    (folder.parent / STAMPS).write_text(json.dumps(stamps), encoding="utf-8")


STAMPS = ".demo-inputs.json"
RUN_FILES = ("checkpoints", "model", "tensorboard", "metrics.jsonl", "loss.png", "config.yaml")


def _clear_run(run: Path) -> None:
    """Remove what an earlier demo run wrote in ``run`` (only its own files: nothing else is touched)."""
    for name in RUN_FILES:
        path = run / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def prepare(out: Path, docs: list[str]):
    """Tokenizer and shards, reused when an earlier demo built them from the same corpus and settings."""
    from lmforge.tokenizer.core import Tokenizer
    from lmforge.tokenizer.shards import TokenShards, build_shards
    from lmforge.tokenizer.train import train_bpe

    key = _fingerprint(docs, VOCAB_SIZE, "bpe")
    if _cached(out / "tokenizer", key):
        tokenizer = Tokenizer.load(out / "tokenizer")
        print(f"tokenizer: reused {out / 'tokenizer'} (same corpus and settings)")
    else:
        tokenizer = train_bpe(docs, VOCAB_SIZE)
        tokenizer.save(out / "tokenizer")
        _stamp(out / "tokenizer", key)
        print(f"tokenizer: byte-level BPE, {tokenizer.vocab_size} tokens -> {out / 'tokenizer'}")
    key = _fingerprint(key, VAL_FRACTION)
    if _cached(out / "shards", key):
        tokens = TokenShards(out / "shards").index["tokens"]
        print(f"shards: reused {out / 'shards'} ({tokens:,} tokens)")
    else:
        tokens = build_shards(docs, tokenizer, out / "shards", VAL_FRACTION, workers=1, progress=False)[
            "tokens"
        ]
        _stamp(out / "shards", key)
        print(f"shards: {tokens:,} tokens -> {out / 'shards'}")
    return tokenizer, tokens


def run_demo(out: str | Path, minutes: float, seed: int, overrides: list[str]) -> dict:
    """Corpus -> tokenizer -> shards -> a run fitted to ``minutes`` -> val perplexity and samples.

    The schedule is fitted to the time budget while training (``fit_schedule_to_time``): the cosine
    ends when the minutes do, however fast or loaded the machine is, and the run never stops early.
    A second demo in the same folder reuses the tokenizer and shards and trains a fresh run.
    """
    from lmforge.infer.generate import generate
    from lmforge.models.io import load_model

    out = Path(out)
    docs = demo_corpus()
    print(
        f"corpus: Python reference manual (pydoc_data.topics, PSF licence), {len(docs)} topics, "
        f"{sum(map(len, docs)):,} characters"
    )
    tokenizer, tokens = prepare(out, docs)
    budget = [f"max_minutes={minutes}", "fit_schedule_to_time=true", "max_steps=1000000"]
    base = [*budget, f"data.shards={out / 'shards'}", f"out_dir={out / 'run'}", f"seed={seed}", *overrides]
    cfg = load_config(TrainConfig, "train/demo", base)
    if (out / "run" / "checkpoints").is_dir():
        print(f"an earlier demo run is in {out / 'run'}: training a fresh one in its place")
        _clear_run(out / "run")
    trainer = Trainer(cfg)
    print(
        f"training: {trainer.model.num_params() / 1e6:.1f}M parameters for {minutes:g} min "
        "(the lr schedule is fitted to the time as the run goes)"
    )
    summary = trainer.run()
    losses = [r["loss"] for r in trainer.metrics.records() if "loss" in r]
    model, tok = load_model(out / "run" / "model")
    torch.manual_seed(seed)
    samples = [p + generate(model, tok, p, max_new_tokens=60, temperature=0.8, top_k=40) for p in PROMPTS]
    (out / "samples.txt").write_text("\n\n".join(samples) + "\n", encoding="utf-8")
    result = {
        "corpus": "pydoc_data.topics (CPython reference manual, PSF licence)",
        "tokens": tokens,
        "steps": summary["step"],
        "first_loss": losses[0],
        "final_loss": summary["loss"],
        "val_loss": summary["val_loss"],
        "val_perplexity": summary["val_ppl"],
        "minutes": summary["elapsed_s"] / 60,
        "model_dir": str(out / "run" / "model"),
    }
    (out / "summary.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(
        f"\nloss {losses[0]:.2f} -> {summary['loss']:.2f} in {summary['step']} steps; "
        f"val loss {summary['val_loss']:.3f}, val perplexity {summary['val_ppl']:.1f} "
        f"(uniform over the vocabulary would be {tokenizer.vocab_size}; "
        f"e^loss = {math.exp(losses[0]):.0f} at start)"
    )
    print("\nsamples (temperature 0.8, top-k 40):")
    for s in samples:
        print(f"--- {s}")
    print(f"\nrun folder: {out}  (metrics.jsonl, loss.png, checkpoints/, model/, samples.txt)")
    print(f"try: lmforge generate {out / 'run' / 'model'} --prompt 'The for statement' --temperature 0.8")
    return result
