"""The fast training defaults (train/fast.py): which precision ``auto`` picks on which machine, the kept
heap (a second large allocation reuses the first's pages instead of faulting fresh zeroed ones in), and
the settings a run records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import corpus_text
from lmforge.config import load_config
from lmforge.device import glibc
from lmforge.tokenizer.shards import build_shards
from lmforge.train import fast
from lmforge.train.config import TrainConfig
from lmforge.train.fast import training_dtype
from lmforge.train.trainer import Trainer


@pytest.mark.parametrize(
    ("amx", "name", "want"),
    [
        (True, "auto", torch.bfloat16),  # AMX: bf16 matmuls pay
        (False, "auto", torch.float32),  # AVX-512(-BF16) alone: bf16 is slower than fp32
        (True, "float32", torch.float32),  # an explicit choice wins
        (False, "bfloat16", torch.bfloat16),
    ],
)
def test_auto_precision_is_bf16_only_where_the_cpu_has_amx(monkeypatch, amx, name, want):
    monkeypatch.setattr(fast, "has_amx", lambda: amx)
    assert training_dtype(name, torch.device("cpu")) == want


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads Linux's /proc/cpuinfo")
def test_amx_is_found_where_the_cpu_has_it():
    """has_amx agrees with the kernel's CPU flags (torch 2.13 moved its probe: a stale one said no
    everywhere, and AMX machines trained in fp32 at a sixth of their bf16 matmul speed)."""
    flags = {
        f
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("flags")
        for f in line.split(":", 1)[1].split()
    }
    assert fast.has_amx() == ("amx_tile" in flags and "amx_bf16" in flags)


FAULTS = """
import json, resource, torch
import lmforge.train.fast  # a training process's imports: its heap layout (see the test's docstring)
from lmforge.device import heap_allocator

def faults(nbytes):  # minor page faults of allocating and writing a fresh nbytes tensor
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(nbytes, dtype=torch.uint8).fill_(1)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

size = 96 << 20  # above glibc's 32 MiB mmap ceiling: by default always a fresh mapping
out = {"pages": size // resource.getpagesize(), "default": [faults(size), faults(size)]}
with heap_allocator() as on:
    out["on"] = on
    out["kept"] = [faults(size), faults(size)]
out["after"] = faults(size)
print(json.dumps(out))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or glibc() is None, reason="glibc only")
def test_the_kept_heap_serves_the_next_large_block_without_page_faults():
    """In a fresh process (a long-lived one's heap layout is whatever earlier work left); up to three:
    in about 1 of 10 fresh processes here the kept block is faulted in again, so one process alone
    would make a flaky test. Why layout matters: PyTorch allocates 64-byte aligned, and glibc's aligned
    allocation asks for a little more than the block, so a freed block fits the next same-size request
    only when free space lies next to it; right after importing only ``lmforge.device`` small
    allocations land between the large blocks and nothing is reused (9 processes in 12), after a
    training process's imports they come from free space elsewhere. Training and ``eval suite`` runs
    show the steady state: 1.47M page faults of an eval run became 0.31M."""
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, check=True)
        got = json.loads(done.stdout.strip().splitlines()[-1])
        pages = got["pages"]
        if got["kept"][1] < pages // 20:  # kept: the next block reuses the first's pages
            break
    assert got["default"][1] > pages // 2  # by default: every page faulted in, zeroed, again
    assert got["on"] and got["kept"][1] < pages // 20
    assert got["after"] > pages // 2  # defaults back: the memory went back to the OS


def test_a_run_records_its_speed_settings(tmp_path, bpe_tokenizer):
    shards = tmp_path / "shards"
    build_shards([corpus_text()[:20_000]], bpe_tokenizer, shards, val_fraction=0.1, progress=False)
    overrides = [
        f"data.shards={shards}",
        f"out_dir={tmp_path / 'run'}",
        "model.n_layer=1",
        "model.n_head=2",
        "model.d_model=16",
        "model.max_seq_len=16",
        "data.seq_len=16",
        "max_steps=1",
        "eval_batches=0",
        "export=false",
        "progress=false",
        "device=cpu",
    ]
    Trainer(load_config(TrainConfig, None, overrides)).run()
    settings = json.loads((tmp_path / "run" / "settings.json").read_text())
    assert settings["fused_lm_head_loss"] is True
    assert settings["autocast"] == ("bfloat16" if fast.has_amx() else None)  # any width: bf16 on AMX
    assert settings["amx"] == fast.has_amx()
    assert settings["keep_heap"] == (glibc() is not None)
