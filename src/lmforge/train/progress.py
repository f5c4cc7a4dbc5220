"""Where a run stands: the counters a checkpoint stores beside the weights and a resume restores."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class Progress:
    step: int = 0  # optimizer steps done; also the data position (batch k depends on (seed, k) only)
    tokens_seen: int = 0
    elapsed: float = 0.0  # training wall time in seconds, summed over resumed segments
    best_val: float = math.inf
    evals_since_best: int = 0
    horizon: int | None = None  # the lr schedule's planned length, when fitted to a time budget

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, default in asdict(Progress()).items():  # checkpoints older than a field lack it
            setattr(self, key, state.get(key, default))

    def record_val(self, val_loss: float) -> None:
        """Track the best validation loss and how many evaluations have not improved on it."""
        if val_loss < self.best_val:
            self.best_val, self.evals_since_best = val_loss, 0
        else:
            self.evals_since_best += 1
