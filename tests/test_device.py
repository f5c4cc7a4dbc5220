"""Device and dtype choice: one helper for every stage, and a one-line error that says what to do when
the asked-for device is not there (a CPU-only PyTorch asked for CUDA)."""

from __future__ import annotations

import pytest
import torch

from lmforge.device import pick_device, pick_dtype
from lmforge.errors import LmforgeError


def test_auto_and_explicit_choices():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert pick_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(LmforgeError, match="unknown dtype 'fp8'"):
        pick_dtype("fp8", torch.device("cpu"))
    with pytest.raises(LmforgeError, match="'gpu' is not a device; use auto, cpu, cuda or cuda:N"):
        pick_device("gpu")


def test_cuda_without_cuda_says_what_to_do(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LmforgeError, match=r"device='cuda' but .*: use device=cpu \(or auto\)"):
        pick_device("cuda")
    from lmforge.cli import main

    assert main(["pretrain", "--config", "train/demo", "device=cuda", "data.shards=nowhere"]) == 2
    err = capsys.readouterr().err
    assert "device='cuda' but" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
