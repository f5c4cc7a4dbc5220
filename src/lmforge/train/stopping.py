"""When a run stops: ``max_steps``, the wall-time budget, early stopping, a val-loss target, or a signal.

SIGTERM (what cluster schedulers send before preempting a job) and Ctrl-C (SIGINT) end the run at the
end of the current step, with a checkpoint, so nothing trained is lost; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import signal
import threading
import time

from lmforge.train.config import TrainConfig
from lmforge.train.distributed import DistEnv, any_rank, broadcast_flag, broadcast_value
from lmforge.train.progress import Progress


class StopPolicy:
    def __init__(self, cfg: TrainConfig, env: DistEnv, progress: Progress):
        self.cfg, self.env, self.progress = cfg, env, progress
        self.started, self.elapsed0, self.step0 = time.monotonic(), progress.elapsed, progress.step
        self.signal: str | None = None  # the name of a stop signal received
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopPolicy:
        if threading.current_thread() is threading.main_thread():  # Python delivers signals there only
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame) -> None:
        if self.signal == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user means now
        self.signal = signal.Signals(signum).name

    def tick(self) -> None:
        """Account the wall time since the run (or its resumed segment) started."""
        self.progress.elapsed = self.elapsed0 + time.monotonic() - self.started

    def plan(self) -> None:
        """With ``fit_schedule_to_time``: the schedule's length = steps done + the steps the rest of the
        budget allows at this segment's measured rate (evaluations and checkpoints included), so the
        cosine ends as time runs out however fast or loaded the machine is. The same on every rank."""
        p, cfg = self.progress, self.cfg
        done = p.step - self.step0
        if not cfg.fit_schedule_to_time or done < 3:  # warmup needs no horizon; too few steps to time
            return
        seconds = broadcast_value(p.elapsed - self.elapsed0, self.env)
        left = 60 * cfg.max_minutes - (self.elapsed0 + seconds)
        p.horizon = min(cfg.max_steps, p.step + max(0, int(left * done / seconds)))

    def before_step(self) -> str | None:
        """``max_steps``, a stop signal (on any rank) or ``max_minutes`` (rank 0's clock decides); the
        same answer on every rank, so all stop at the same step."""
        if self.progress.step >= self.cfg.max_steps:
            return "max_steps"
        if any_rank(self.signal is not None, self.env):
            return self.signal or "signal"
        if self.cfg.max_minutes is None:
            return None
        late = self.elapsed0 + time.monotonic() - self.started > 60 * self.cfg.max_minutes
        if not broadcast_flag(late, self.env):
            return None
        self.tick()  # the run's wall time is the time it stopped at, past the budget
        return "max_minutes"

    def after_eval(self, val_loss: float | None) -> str | None:
        """``early_stop`` after ``early_stop_patience`` evaluations without a better val loss;
        ``val_target`` once the val loss reaches ``stop_at_val_loss``."""
        patience, target = self.cfg.early_stop_patience, self.cfg.stop_at_val_loss
        if patience and self.progress.evals_since_best >= patience:
            return "early_stop"
        if val_loss is not None and target is not None and val_loss <= target:
            return "val_target"
        return None
