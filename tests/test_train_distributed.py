"""Data parallelism on CPU: `torchrun --nproc_per_node=2` (gloo) follows the same loss trajectory as one
process with the same global batch (2 ranks x 4 rows vs 1 process x 2 micro-batches of 4 rows).

Tolerance 1e-5 absolute on every logged loss: the only difference is the order in which the two
half-batch gradients are summed (all-reduce vs accumulation), which moves fp32 results by ~1e-7."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import corpus_text
from lmforge.config import load_config
from lmforge.tokenizer.shards import build_shards
from lmforge.train.config import TrainConfig
from lmforge.train.trainer import Trainer

CONFIG = """\
model: {n_layer: 2, n_head: 2, d_model: 32, max_seq_len: 32}
data: {seq_len: 32}
optim: {lr: 0.003, warmup_steps: 2}
batch_size: 4
max_steps: 8
eval_every: 4
eval_batches: 2
ckpt_every: 4
log_every: 1
progress: false
threads: 1
dtype: float32  # the arithmetic of the ranks is compared, not a precision (auto: bf16 on AMX)
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory, bpe_tokenizer) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("dist")
    docs = [p for p in corpus_text()[:100_000].split("\n\n") if p.strip()]
    build_shards(docs, bpe_tokenizer, root / "shards", val_fraction=0.1, progress=False)
    (root / "cfg.yaml").write_text(CONFIG)
    return root, root / "shards"


def losses(run: Path) -> list[tuple[int, str, float]]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        key = "loss" if "loss" in r else "val_loss"
        out.append((r["step"], key, r[key]))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_torchrun_two_processes_match_one(setup, parallel):
    root, shards = setup
    run = root / parallel
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "lmforge", "pretrain", "--config", str(root / "cfg.yaml")]
    cmd += [f"data.shards={shards}", f"out_dir={run}", f"parallel={parallel}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("step 8: loss") == 1  # only rank 0 reports

    single_dir = root / f"single-{parallel}"
    overrides = [f"data.shards={shards}", f"out_dir={single_dir}", "grad_accum=2"]
    Trainer(load_config(TrainConfig, root / "cfg.yaml", overrides)).run()

    got, want = losses(run), losses(single_dir)
    assert [g[:2] for g in got] == [w[:2] for w in want] and len(got) == 10  # 8 train + 2 val records
    for (step, key, a), (_, _, b) in zip(got, want):
        assert abs(a - b) < 1e-5, f"{parallel} step {step} {key}: {a} vs {b}"
    assert want[-1][2] < want[0][2]  # and it trained
    assert (run / "model" / "model.safetensors").is_file()  # rank 0 exported full weights
