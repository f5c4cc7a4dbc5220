"""Where a run's numbers go: metrics.jsonl (one record per line), TensorBoard, and a loss-curve PNG.

Only rank 0 writes. On resume, records after the resumed step (from the run that was killed) are dropped
so the log reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from lmforge.atomic import atomic_file

# Dense bf16 tensor-core peak FLOP/s by device name (vendor datasheets, without sparsity). A device not
# listed gets no MFU rather than a guess.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
)


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Peak FLOP/s of one device for ``dtype``; None where unknown (CPUs, unlisted GPUs, fp32)."""
    if device.type != "cuda" or dtype != torch.bfloat16:
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl ([] when there is none yet)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class Throughput:
    """Tokens per second over the window since the last record, and MFU where the peak is known."""

    def __init__(self, tokens_seen: int, flops_per_token: float | None, peak: float | None, world: int):
        self.window_start, self.window_tokens = time.monotonic(), tokens_seen
        self.flops_per_token, self.peak, self.world = flops_per_token, peak, world

    def measure(self, tokens_seen: int) -> dict[str, float]:
        now = time.monotonic()
        tps = (tokens_seen - self.window_tokens) / max(now - self.window_start, 1e-9)
        self.window_start, self.window_tokens = now, tokens_seen
        out = {"tokens_per_s": tps}
        if self.peak is not None and self.flops_per_token is not None:
            out["mfu"] = tps * self.flops_per_token / (self.peak * self.world)
        return out


class MetricsLog:
    """metrics.jsonl is the record; TensorBoard mirrors it. On resume both are cut back to the resumed
    step: the JSONL is rewritten (atomically) without the killed run's later records, and the TensorBoard
    events lmforge wrote are replaced by a replay of the kept records (TensorBoard's own purge-on-restart
    drops the wrong steps), so each step appears once in each."""

    def __init__(self, run_dir: Path, resume_step: int | None):
        self.path = run_dir / "metrics.jsonl"
        self.png = run_dir / "loss.png"
        kept = []
        if resume_step is not None and self.path.exists():
            kept = [r for r in self.records() if r["step"] <= resume_step]
            with atomic_file(self.path) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        elif self.path.exists():
            self.path.unlink()
        self._file = self.path.open("a", encoding="utf-8")
        self._tb = self._tensorboard(run_dir / "tensorboard")
        for record in kept:
            self._log_tb(record)

    @staticmethod
    def _tensorboard(folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is an optional extra (lmforge[train])
            return None
        for old in folder.glob("events.out.tfevents.*"):  # only the event files lmforge writes
            old.unlink()
        return SummaryWriter(str(folder))

    def log(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self._log_tb(record)

    def _log_tb(self, record: dict[str, Any]) -> None:
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float):
                    self._tb.add_scalar(key, value, record["step"])

    def records(self) -> list[dict[str, Any]]:
        return read_records(self.path)

    def plot(self) -> Path | None:
        """Train and val loss against step, as loss.png (needs matplotlib, an optional extra)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        records = self.records()
        fig, ax = plt.subplots(figsize=(7, 4))
        plotted = False
        for key, style in (("loss", "-"), ("val_loss", "o-")):
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                ax.plot(*zip(*points), style, label=key, markersize=3)
                plotted = True
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.grid(alpha=0.3)
        if plotted:
            ax.legend()
        fig.tight_layout()
        fig.savefig(self.png, dpi=100)
        plt.close(fig)
        return self.png

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
