"""Where a run stands: the counters a checkpoint stores beside the weights and a resume restores."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal


@dataclass
class Progress:
    step: int = 0  # optimizer steps done; also the data position (batch k depends on (seed, k) only)
    tokens_seen: int = 0
    elapsed: float = 0.0  # training wall time in seconds, summed over resumed segments
    best_val: float | None = None  # the best value of the objective's monitored val metric so far
    best_step: int | None = None  # the step of that evaluation
    evals_since_best: int = 0
    horizon: int | None = None  # the lr schedule's planned length, when fitted to a time budget

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, default in asdict(Progress()).items():  # checkpoints older than a field lack it
            setattr(self, key, state.get(key, default))

    def record_val(self, value: float, mode: Literal["min", "max"] = "min") -> bool:
        """Track the best value of the monitored val metric (``mode``: whether lower or higher is better)
        and how many evaluations have not improved on it; True when this one did."""
        best = self.best_val
        if best is None or (value < best if mode == "min" else value > best):
            self.best_val, self.best_step, self.evals_since_best = value, self.step, 0
            return True
        self.evals_since_best += 1
        return False
