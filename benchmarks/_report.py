"""What every benchmark records beside its figures: the machine, its load, and medians with ranges."""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any


def machine(device: str | None = None) -> dict[str, Any]:
    """CPUs and the load average (these machines are noisy); with ``device``, also the torch device,
    threads and version."""
    info: dict[str, Any] = {
        "processor": platform.processor() or platform.machine(),
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
