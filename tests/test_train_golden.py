"""The causal-LM objective reproduces the loop it replaced: the logged losses, learning rates, gradient
norms and val losses of a small fixed CPU run equal those recorded (tests/data/pretrain_golden.json) with
the pre-refactor trainer (commit 1e0639f), to 1e-6."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import corpus_text
from lmforge.config import load_config
from lmforge.tokenizer.shards import build_shards
from lmforge.train.config import TrainConfig
from lmforge.train.trainer import Trainer

GOLDEN = Path(__file__).parent / "data" / "pretrain_golden.json"
GOLDEN_RUN = [
    "model.n_layer=2",
    "model.n_head=2",
    "model.d_model=32",
    "model.max_seq_len=32",
    "data.seq_len=32",
    "batch_size=4",
    "grad_accum=2",
    "optim.lr=0.003",
    "optim.warmup_steps=4",
    "max_steps=12",
    "eval_every=4",
    "eval_batches=2",
    "ckpt_every=6",
    "log_every=1",
    "progress=false",
    "threads=1",
    "dtype=float32",  # the recorded run is fp32 (auto trains in bf16 on AMX CPUs)
    "seed=7",
]


def test_logged_run_matches_the_recorded_one(bpe_tokenizer, tmp_path):
    docs = [p for p in corpus_text()[:150_000].split("\n\n") if p.strip()]
    build_shards(docs, bpe_tokenizer, tmp_path / "shards", val_fraction=0.1, progress=False)
    cfg = load_config(
        TrainConfig, None, [*GOLDEN_RUN, f"data.shards={tmp_path / 'shards'}", f"out_dir={tmp_path / 'run'}"]
    )
    Trainer(cfg).run()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    got = [json.loads(line) for line in lines]
    want = json.loads(GOLDEN.read_text())
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for g, w in zip(got, want):
        assert set(w) <= set(g)
        for key, value in w.items():
            assert g[key] == pytest.approx(value, rel=1e-6, abs=1e-6), (g["step"], key)
