"""Saving and restoring everything a run needs to continue bit for bit: weights, optimizer, schedule,
progress counters and RNG states. Checkpoints hold full (unsharded) tensors, written by rank 0, so a run
trained with FSDP on 8 GPUs resumes on one CPU and vice versa."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lmforge.checkpoint import load_latest_intact, save_checkpoint
from lmforge.config import to_dict
from lmforge.train import distributed as D
from lmforge.train.config import TrainConfig
from lmforge.train.optim import set_peak_lr
from lmforge.train.progress import Progress


class Checkpointer:
    def __init__(self, cfg: TrainConfig, env: D.DistEnv, model: torch.nn.Module, optimizer, scheduler):
        self.cfg, self.env, self.run_dir = cfg, env, Path(cfg.out_dir)
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.last: Path | None = None  # the newest checkpoint written or resumed from
        self.saved_step = -1
        self.last_state: dict[str, Any] | None = None  # the state saved at ``saved_step`` (for the export)

    def state(self, progress: Progress) -> dict[str, Any]:
        """The full training state, gathered on the CPU (collective: every rank must call it)."""
        model_sd, optim_sd = D.full_state(self.model, self.optimizer)
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "model": model_sd,
            "optimizer": optim_sd,
            "scheduler": self.scheduler.state_dict(),
            **progress.state_dict(),
            "rng": rng,
            "config": to_dict(self.cfg),
        }

    def save(self, progress: Progress) -> dict[str, Any]:
        """Checkpoint the current step (collective); returns the state."""
        state = self.state(progress)
        if self.env.is_main:
            self.last = save_checkpoint(self.run_dir, progress.step, state, self.cfg.keep_last)
        self.saved_step, self.last_state = progress.step, state
        D.barrier(self.env)
        return state

    def restore(self, progress: Progress) -> None:
        """Load the newest intact checkpoint into the model, optimizer, schedule, progress and RNGs."""
        found = load_latest_intact(self.run_dir)
        if found is None:
            if self.env.is_main:
                print(f"{self.run_dir}: no checkpoint yet, starting from step 0")
            return
        path, state = found
        D.load_full_state(self.model, self.optimizer, state["model"], state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        progress.load_state_dict(state)
        # The saved optimizer and schedule carry the old peak lr: the resumed run's config decides it.
        set_peak_lr(self.optimizer, self.scheduler, self.cfg, progress.step)
        torch.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.last, self.saved_step = path, progress.step
        if self.env.is_main:
            print(f"resumed from {path} (step {progress.step})")
