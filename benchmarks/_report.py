"""What every benchmark records beside its figures: the machine, its load, and medians with ranges."""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any


def cpu_model() -> tuple[str, list[str]]:
    """The CPU's model name and the instruction-set flags that decide its speed (AVX-512, bf16, AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), []
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return fields.get("model name", platform.machine()), [
        f for f in fields.get("flags", "").split() if f in wanted
    ]


def machine(device: str | None = None) -> dict[str, Any]:
    """CPUs (model and flags) and the load average (these machines are noisy); with ``device``, also the
    torch device, threads and version."""
    model, flags = cpu_model()
    info: dict[str, Any] = {
        "processor": model,
        "cpu_flags": flags,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    if device is not None:
        import torch

        on_cuda = device.startswith("cuda")
        info["device"] = torch.cuda.get_device_name() if on_cuda else info["processor"]
        info.update(threads=torch.get_num_threads(), torch=torch.__version__)
    return info


def summary(values: list[float]) -> dict[str, float]:
    """Median and range of repeated measurements."""
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def write_json(path: str | Path, result: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"-> {path}")
