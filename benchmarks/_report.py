"""What every benchmark records next to its figures: the machine it ran on and how loaded it was."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch


def machine(device: str = "cpu") -> dict[str, Any]:
    """Device name, threads, CPUs, torch version and the load average (these machines are noisy)."""
    on_cuda = device.startswith("cuda")
    return {
        "device": torch.cuda.get_device_name() if on_cuda else (platform.processor() or "cpu"),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "load_average": os.getloadavg(),
    }


def write_json(path: str | Path, result: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"-> {path}")
