"""Training throughput of lmforge's real loop (``Trainer.train_step``: forward, loss, backward, clipping,
AdamW, schedule) in tokens/s, and MFU on CUDA (6N + 12·L·H·Q·T FLOPs per token against the device's
bf16 peak from ``train.metrics.PEAK_BF16_FLOPS``).

Cases: a GPT 6-layer/384-dim/6-head model at context 256, batch 8 (nanoGPT's Shakespeare-char shape,
vocabulary 65), and GPT-2 124M (vocabulary 50257; on CPU at batch 1 x 256 tokens so a step takes
seconds, on CUDA at batch 32 x 1024). On CPU: fp32 eager vs ``torch.compile``; on CUDA: bf16 autocast +
compile + fused AdamW + flash SDPA. Each figure is the median of ``--repeats`` timed windows (range too).

    python benchmarks/train_throughput.py [--repeats 3] [--steps 5] [--out benchmarks/train_throughput.json]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _report import machine, write_json
from lmforge.config import load_config
from lmforge.tokenizer.shards import build_shards
from lmforge.tokenizer.train import train_char
from lmforge.train.config import TrainConfig
from lmforge.train.trainer import Trainer

CASES = {
    "gpt-6l-384d-256ctx": {
        "vocab": 65,
        "model": ["model.n_layer=6", "model.n_head=6", "model.d_model=384", "model.max_seq_len=256"],
        "cpu": {"batch_size": 8, "seq_len": 256},
        "cuda": {"batch_size": 8, "seq_len": 256},
    },
    "gpt2-124m": {
        "vocab": 50257,
        "model": ["model.n_layer=12", "model.n_head=12", "model.d_model=768", "model.max_seq_len=1024"],
        "cpu": {"batch_size": 1, "seq_len": 256},
        "cuda": {"batch_size": 32, "seq_len": 1024},
    },
}


def random_shards(folder: Path, vocab: int, tokens: int) -> Path:
    """Shards of uniformly random tokens from a character tokenizer with exactly ``vocab`` entries."""
    alphabet = [chr(0x10000 + i) for i in range(vocab - 4)]  # 4 special tokens come first
    tokenizer = train_char(["".join(alphabet)])
    assert tokenizer.vocab_size == vocab
    rng = np.random.default_rng(0)
    text = "".join(np.array(alphabet)[rng.integers(0, len(alphabet), tokens)])
    build_shards([text], tokenizer, folder, val_fraction=0.0, progress=False)
    return folder


def measure(case: str, device: str, compile: bool, steps: int, repeats: int, tmp: Path) -> dict:
    spec = CASES[case]
    kind = "cuda" if device.startswith("cuda") else "cpu"
    b, t = spec[kind]["batch_size"], spec[kind]["seq_len"]
    shards = tmp / f"shards-{case}"
    if not shards.exists():
        random_shards(shards, spec["vocab"], 200_000)
    overrides = [
        *spec["model"],
        f"data.shards={shards}",
        f"data.seq_len={t}",
        f"batch_size={b}",
        f"out_dir={tmp / f'run-{case}-{compile}'}",
        f"device={device}",
        f"compile={str(compile).lower()}",
        "vocab_multiple=64",
        "eval_batches=0",
        "max_steps=1000000",
        "export=false",
        "progress=false",
    ]
    trainer = Trainer(load_config(TrainConfig, None, overrides))
    started = time.perf_counter()
    for _ in range(2):  # warm-up (and compilation)
        trainer.train_step()
    sync = torch.cuda.synchronize if kind == "cuda" else (lambda: None)
    sync()
    warmup_s = time.perf_counter() - started
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        sync()
        rates.append(steps * b * t / (time.perf_counter() - start))
    flops = trainer.model.flops_per_token(t)
    from lmforge.train.metrics import peak_flops

    peak = peak_flops(trainer.env.device, trainer.dtype)
    row = {
        "case": case,
        "device": machine(device)["device"],
        "dtype": str(trainer.dtype).removeprefix("torch."),
        "compile": compile,
        "batch": b,
        "seq_len": t,
        "params": trainer.model.num_params(),
        "warmup_s": round(warmup_s, 1),
        "tokens_per_s_median": round(statistics.median(rates), 1),
        "tokens_per_s_range": [round(min(rates), 1), round(max(rates), 1)],
        "gflop_per_s": round(statistics.median(rates) * flops / 1e9, 1),
    }
    if peak is not None:
        row["mfu"] = round(statistics.median(rates) * flops / peak, 4)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--cases", nargs="+", default=list(CASES))
    ap.add_argument("--steps", type=int, default=5, help="optimizer steps per timed window")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).with_name("train_throughput.json")))
    args = ap.parse_args()
    compiles = [True] if args.device.startswith("cuda") else [False, True]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for case in args.cases:
            for compile in compiles:
                row = measure(case, args.device, compile, args.steps, args.repeats, Path(d))
                rows.append(row)
                mfu = f", MFU {row['mfu']:.1%}" if "mfu" in row else ""
                print(
                    f"{case:<20} {row['dtype']:<9} compile={compile!s:<5} "
                    f"batch {row['batch']}x{row['seq_len']}: "
                    f"{row['tokens_per_s_median']:>10,.0f} tokens/s "
                    f"[{row['tokens_per_s_range'][0]:,.0f}-{row['tokens_per_s_range'][1]:,.0f}]{mfu} "
                    f"(warm-up {row['warmup_s']} s)",
                    flush=True,
                )
    result = {
        "benchmark": "train_throughput",
        "machine": machine(args.device),
        "rows": rows,
    }
    write_json(args.out, result)


if __name__ == "__main__":
    main()
