"""``lmforge demo``: the whole path on a corpus every Python installation has, in a few CPU minutes.

The corpus is CPython's reference manual as shipped in ``pydoc_data.topics`` (the text behind
``help("if")`` etc.; ~465k characters of English technical prose, PSF licence), one document per topic.
The demo trains a byte-level BPE tokenizer on it, writes token shards, pretrains the ``train/demo``
preset for the time budget, reports val perplexity and prints samples. Everything lands in one folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lmforge.config import load_config
from lmforge.train.config import TrainConfig
from lmforge.train.trainer import Trainer

VOCAB_SIZE = 2048
PROMPTS = ["The", "In Python,", "A class", "If the"]


def demo_corpus() -> list[str]:
    """The reference manual's topics, in a fixed order (sorted by topic name)."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    return [topics[name].strip() for name in sorted(topics) if topics[name].strip()]


def seconds_per_step(cfg: TrainConfig, steps: int = 6) -> float:
    """Median time of a few optimizer steps of the real loop (``Trainer.train_step``) on the run's data,
    device, precision and threads, in a throwaway run folder."""
    with tempfile.TemporaryDirectory(prefix="lmforge-demo-probe") as probe:
        trainer = Trainer(dataclasses.replace(cfg, out_dir=probe, progress=False))
        timings = []
        for _ in range(steps + 2):  # the first two warm up allocators and caches
            start = time.perf_counter()
            trainer.train_step()
            if trainer.env.device.type == "cuda":
                torch.cuda.synchronize()
            timings.append(time.perf_counter() - start)
        trainer.metrics.close()
    return statistics.median(timings[2:])


def run_demo(out: str | Path, minutes: float, seed: int, overrides: list[str]) -> dict:
    from lmforge.infer.generate import generate
    from lmforge.models.io import load_model
    from lmforge.tokenizer.shards import build_shards
    from lmforge.tokenizer.train import train_bpe

    out = Path(out)
    docs = demo_corpus()
    print(
        f"corpus: Python reference manual (pydoc_data.topics, PSF licence), {len(docs)} topics, "
        f"{sum(map(len, docs)):,} characters"
    )
    tokenizer = train_bpe(docs, VOCAB_SIZE)
    tokenizer.save(out / "tokenizer")
    print(f"tokenizer: byte-level BPE, {tokenizer.vocab_size} tokens -> {out / 'tokenizer'}")
    index = build_shards(docs, tokenizer, out / "shards", val_fraction=0.05, workers=1, progress=False)
    print(f"shards: {index['tokens']:,} tokens -> {out / 'shards'}")

    base = [f"data.shards={out / 'shards'}", f"out_dir={out / 'run'}", f"seed={seed}", *overrides]
    cfg = load_config(TrainConfig, "train/demo", base)
    step_s = seconds_per_step(cfg)
    eval_share = 1 + cfg.eval_batches / cfg.eval_every  # evaluation batches cost about a forward each
    # The real loop also clips, schedules, loads and logs: plan for ~85 % of the budget at the timed pace.
    steps = max(20, int(0.85 * 60 * minutes / (step_s * eval_share)))
    if not any(o.startswith("max_steps=") for o in overrides):
        cfg = load_config(TrainConfig, "train/demo", [*base, f"max_steps={steps}", f"max_minutes={minutes}"])
    trainer = Trainer(cfg)
    print(
        f"training: {trainer.model.num_params() / 1e6:.1f}M parameters, {cfg.max_steps} steps "
        f"(~{step_s:.2f} s each) in at most {minutes:g} min"
    )
    summary = trainer.run()

    losses = [r["loss"] for r in trainer.metrics.records() if "loss" in r]
    model, tok = load_model(out / "run" / "model")
    torch.manual_seed(seed)
    samples = [p + generate(model, tok, p, max_new_tokens=60, temperature=0.8, top_k=40) for p in PROMPTS]
    (out / "samples.txt").write_text("\n\n".join(samples) + "\n", encoding="utf-8")
    result = {
        "corpus": "pydoc_data.topics (CPython reference manual, PSF licence)",
        "tokens": index["tokens"],
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
