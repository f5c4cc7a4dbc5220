"""Training throughput, lmforge against a plain reference GPT, in the same process on the same shapes.

The model: GPT 6 layers, 384 dims, 6 heads, context 256, batch 8, exact GELU, biases, tied embeddings,
at a vocabulary of 65 (Shakespeare characters) and 50,304 (GPT-2's, padded). The reference is the
textbook nanoGPT-style model and step in ``_reference_gpt.py`` (fp32, eager, full logits, PyTorch's
default AdamW); lmforge is its real loop (``Trainer.train_step``: loss, backward, clipping, AdamW,
schedule) with the defaults this machine gets (``train/fast.py``, recorded in the output: the fused
LM-head loss, fused AdamW, the kept heap, bf16 autocast only on AMX CPUs). Timed windows of ``--steps``
optimizer steps alternate between the two, ``--repeats`` each; tokens/s are medians (with ranges) and
the ratio is lmforge's median over the reference's. Goals (issue 14): >= 1.5x at 50,304, >= 1.3x at 65.

    python benchmarks/train_throughput.py [--repeats 3] [--steps 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _reference_gpt import ReferenceGPT, optimizer, train_step
from _report import machine, summary, write_json
from lmforge.config import load_config
from lmforge.device import heap_allocator
from lmforge.tokenizer.shards import build_shards
from lmforge.tokenizer.train import train_char
from lmforge.train.config import TrainConfig
from lmforge.train.fast import describe
from lmforge.train.trainer import Trainer

LAYERS, HEADS, D, CONTEXT, BATCH = 6, 6, 384, 256, 8
GOALS = {65: 1.3, 50304: 1.5}


def random_shards(folder: Path, vocab: int, tokens: int) -> Path:
    """Shards of uniformly random tokens from a character tokenizer with exactly ``vocab`` entries."""
    alphabet = [chr(0x10000 + i) for i in range(vocab - 4)]  # 4 special tokens come first
    tokenizer = train_char(["".join(alphabet)])
    assert tokenizer.vocab_size == vocab
    rng = np.random.default_rng(0)
    text = "".join(np.array(alphabet)[rng.integers(0, len(alphabet), tokens)])
    build_shards([text], tokenizer, folder, val_fraction=0.0, progress=False)
    return folder


def lmforge_trainer(vocab: int, device: str, tmp: Path) -> Trainer:
    shards = random_shards(tmp / f"shards-{vocab}", vocab, 200_000)
    overrides = [
        f"model.n_layer={LAYERS}",
        f"model.n_head={HEADS}",
        f"model.d_model={D}",
        f"model.max_seq_len={CONTEXT}",
        "model.gelu_approximate=none",  # the reference's GELU
        f"data.shards={shards}",
        f"data.seq_len={CONTEXT}",
        f"batch_size={BATCH}",
        f"out_dir={tmp / f'run-{vocab}'}",
        f"device={device}",
        "vocab_multiple=1",  # the reference's vocabulary, unpadded
        "eval_batches=0",
        "max_steps=1000000",
        "export=false",
        "progress=false",
    ]
    return Trainer(load_config(TrainConfig, None, overrides))


def window(step, steps: int, sync) -> float:
    """Tokens/s over ``steps`` calls of ``step``."""
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return steps * BATCH * CONTEXT / (time.perf_counter() - start)


def measure(vocab: int, device: str, steps: int, repeats: int, tmp: Path) -> dict:
    trainer = lmforge_trainer(vocab, device, tmp)
    torch.manual_seed(0)
    reference = ReferenceGPT(vocab, CONTEXT, LAYERS, HEADS, D).to(device)
    ref_opt = optimizer(reference, 6e-4, 0.1, (0.9, 0.95))
    x = torch.randint(0, vocab, (BATCH, CONTEXT), device=device)
    y = torch.randint(0, vocab, (BATCH, CONTEXT), device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def ours() -> float:
        with heap_allocator(trainer.keeps_heap):  # as Trainer.run keeps it around its steps
            return window(trainer.train_step, steps, sync)

    def theirs() -> float:
        return window(lambda: train_step(reference, ref_opt, x, y), steps, sync)

    ours_ref_params = trainer.model.num_params(), sum(p.numel() for p in reference.parameters())
    assert ours_ref_params[0] == ours_ref_params[1], ours_ref_params  # the same model
    rates: dict[str, list[float]] = {"reference": [], "lmforge": []}
    for fn in (theirs, ours):  # warm-up: allocations, oneDNN kernels, optimizer state
        fn()
    for r in range(repeats):
        order = (("reference", theirs), ("lmforge", ours))
        for name, fn in order if r % 2 == 0 else order[::-1]:
            rates[name].append(fn())
    ratio = statistics.median(rates["lmforge"]) / statistics.median(rates["reference"])
    return {
        "vocab": vocab,
        "params": ours_ref_params[0],
        "batch": BATCH,
        "seq_len": CONTEXT,
        "steps_per_window": steps,
        "reference_tokens_per_s": summary(rates["reference"]),
        "lmforge_tokens_per_s": summary(rates["lmforge"]),
        "speedup": round(ratio, 2),
        "goal": GOALS.get(vocab),
        "lmforge_settings": describe(trainer.env.device, trainer.dtype, trainer.keeps_heap, False),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--vocab", nargs="+", type=int, default=list(GOALS))
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per timed window")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("train_throughput.json")))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for vocab in args.vocab:
            row = measure(vocab, args.device, args.steps, args.repeats, Path(d))
            rows.append(row)
            ours, ref = row["lmforge_tokens_per_s"], row["reference_tokens_per_s"]
            print(
                f"vocab {vocab:>6}: lmforge {ours['median']:8,.0f} tokens/s "
                f"[{ours['min']:,.0f}-{ours['max']:,.0f}], "
                f"reference {ref['median']:8,.0f} [{ref['min']:,.0f}-{ref['max']:,.0f}]"
                f" -> {row['speedup']:.2f}x (goal {row['goal']}x)",
                flush=True,
            )
    write_json(args.out, {"benchmark": "train_throughput", "machine": machine(args.device), "rows": rows})


if __name__ == "__main__":
    main()
