"""When a run stops: ``max_steps``, the wall-time budget, early stopping, or a val-loss target."""

from __future__ import annotations

import time

from lmforge.train.config import TrainConfig
from lmforge.train.distributed import DistEnv, broadcast_flag
from lmforge.train.progress import Progress


class StopPolicy:
    def __init__(self, cfg: TrainConfig, env: DistEnv, progress: Progress):
        self.cfg, self.env, self.progress = cfg, env, progress
        self.started, self.elapsed0 = time.monotonic(), progress.elapsed

    def tick(self) -> None:
        """Account the wall time since the run (or its resumed segment) started."""
        self.progress.elapsed = self.elapsed0 + time.monotonic() - self.started

    def before_step(self) -> str | None:
        """``max_steps`` or ``max_minutes``; the same answer on every rank (rank 0's clock decides)."""
        if self.progress.step >= self.cfg.max_steps:
            return "max_steps"
        if self.cfg.max_minutes is None:
            return None
        late = self.elapsed0 + time.monotonic() - self.started > 60 * self.cfg.max_minutes
        return "max_minutes" if broadcast_flag(late, self.env) else None

    def after_eval(self, val_loss: float | None) -> str | None:
        """``early_stop`` after ``early_stop_patience`` evaluations without a better val loss;
        ``val_target`` once the val loss reaches ``stop_at_val_loss``."""
        patience, target = self.cfg.early_stop_patience, self.cfg.stop_at_val_loss
        if patience and self.progress.evals_since_best >= patience:
            return "early_stop"
        if val_loss is not None and target is not None and val_loss <= target:
            return "val_target"
        return None
