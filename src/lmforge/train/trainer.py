"""The pretraining loop: one process on a CPU up to many GPUs under ``torchrun``, same code path.

Per optimizer step: ``grad_accum`` micro-batches (gradient all-reduce only on the last), the loss checked
for NaN/inf *before* the update, global-norm clipping, AdamW, the lr schedule. Every ``eval_every`` steps
a fixed set of val batches gives val loss and perplexity; every ``ckpt_every`` steps (and at the end) a
checkpoint holds everything needed to continue bit-for-bit: weights, optimizer, schedule, step (which is
also the data position, see ``data.WindowSampler``) and RNG states.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmforge.config import save_config, to_dict
from lmforge.errors import LmforgeError
from lmforge.models.gpt import GPT
from lmforge.train import distributed as D
from lmforge.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from lmforge.train.config import TrainConfig
from lmforge.train.data import TokenShards, WindowSampler
from lmforge.train.metrics import MetricsLog, peak_flops
from lmforge.train.optim import build_optimizer, build_scheduler, lr_factor


def round_up(n: int, multiple: int) -> int:
    return n if multiple <= 1 else multiple * math.ceil(n / multiple)


def compute_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    if cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype]


class NonFiniteLoss(LmforgeError):
    """The loss became NaN or infinite: the run stops before the bad update is applied."""


class Trainer:
    """Build everything a run needs from its config, then ``run()`` it.

    ``on_step(step, loss)`` is called after each optimizer step (rank 0 and others alike); the demo uses
    it to report, tests use it to inject faults.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        resume: bool = False,
        on_step: Callable[[int, float], None] | None = None,
    ):
        self.env = D.init_distributed(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.run_dir = Path(cfg.out_dir)
        self.shards = TokenShards(cfg.data.shards)
        self.tokenizer = self.shards.tokenizer()
        vocab = round_up(self.shards.vocab_size, cfg.vocab_multiple)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab))
        self.cfg, self.on_step = cfg, on_step
        env, device = self.env, self.env.device
        if not resume and list_checkpoints(self.run_dir):
            raise LmforgeError(f"{self.run_dir} already holds checkpoints: pass --resume, or another out_dir")

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = GPT(cfg.model).to(device)
        self.wrapped = D.wrap_model(self.model, env, cfg.parallel)
        self.optimizer = build_optimizer(self.model, cfg, device)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.dtype = compute_dtype(cfg, device)
        self.autocast = (
            torch.autocast(device.type, dtype=self.dtype) if self.dtype != torch.float32 else nullcontext()
        )
        self.loss_fn = torch.compile(self._loss) if cfg.compile else self._loss

        world, micro = env.world_size, cfg.batch_size
        self.train_data = WindowSampler(
            self.shards, "train", cfg.data.seq_len, micro * cfg.grad_accum * world, cfg.seed, env.rank, world
        )
        self.val_data = None  # same global batch as training, so val numbers do not depend on world size
        if cfg.eval_batches and self.shards.pieces("val", cfg.data.seq_len):
            self.val_data = WindowSampler(
                self.shards, "val", cfg.data.seq_len, self.train_data.global_batch, cfg.seed, env.rank, world
            )

        self.step, self.tokens_seen, self.elapsed = 0, 0, 0.0
        self.best_val, self.evals_since_best = math.inf, 0
        self.last_checkpoint: Path | None = None
        if resume:
            self._restore()
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
        self.metrics = MetricsLog(self.run_dir, self.step if resume else None) if env.is_main else None

    # ----------------------------------------------------------------------------------------------
    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.autocast:
            logits = self.wrapped(x)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.env.device.type == "cuda":
            return t.pin_memory().to(self.env.device, non_blocking=True)
        return t

    def train_step(self) -> tuple[float, torch.Tensor]:
        """One optimizer step; returns the global mean loss and the gradient norm (before clipping)."""
        cfg = self.cfg
        x_all, y_all = self.train_data.batch(self.step)
        total = torch.zeros((), device=self.env.device)
        for i in range(cfg.grad_accum):
            rows = slice(i * cfg.batch_size, (i + 1) * cfg.batch_size)
            x, y = self._to_device(x_all[rows]), self._to_device(y_all[rows])
            with D.no_grad_sync(self.wrapped, skip=i < cfg.grad_accum - 1):
                loss = self.loss_fn(x, y) / cfg.grad_accum
                loss.backward()
            total += loss.detach()
        loss_value = D.all_reduce_mean(total, self.env).item()
        if not math.isfinite(loss_value):
            where = self.last_checkpoint or "none (no checkpoint was written yet)"
            raise NonFiniteLoss(
                f"loss is {loss_value} at step {self.step + 1}; stopped before applying the update. "
                f"Last good checkpoint: {where}. Resume from it with --resume (a lower optim.lr may help)."
            )
        clip = self.cfg.optim.grad_clip or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.last_lr = self.optimizer.param_groups[0]["lr"]  # the rate this update uses (for the log)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += x_all.numel() * self.env.world_size
        return loss_value, grad_norm

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean val loss over the same ``eval_batches`` global batches every time (so evals compare)."""
        if self.val_data is None:
            return None
        self.model.eval()
        total = torch.zeros((), device=self.env.device)
        micro = self.cfg.batch_size
        for k in range(self.cfg.eval_batches):
            x_all, y_all = self.val_data.batch(k)
            for i in range(0, len(x_all), micro):
                x, y = x_all[i : i + micro], y_all[i : i + micro]
                total += self.loss_fn(self._to_device(x), self._to_device(y))
        self.model.train()
        n = self.cfg.eval_batches * self.cfg.grad_accum
        return D.all_reduce_mean(total / n, self.env).item()

    # ----------------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        model_sd, optim_sd = D.full_state(self.wrapped, self.optimizer)
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "model": model_sd,
            "optimizer": optim_sd,
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,  # also the data position: batch k depends on (seed, k) only
            "tokens_seen": self.tokens_seen,
            "elapsed": self.elapsed,
            "best_val": self.best_val,
            "evals_since_best": self.evals_since_best,
            "rng": rng,
            "config": to_dict(self.cfg),
        }

    def save(self) -> dict[str, Any]:
        """Checkpoint the current step (collective); returns the state (full tensors, on the CPU)."""
        state = self._state()
        if self.env.is_main:
            self.last_checkpoint = save_checkpoint(self.run_dir, self.step, state, self.cfg.keep_last)
        D.barrier(self.env)
        return state

    def _restore(self) -> None:
        path = latest_checkpoint(self.run_dir)
        if path is None:
            if self.env.is_main:
                print(f"{self.run_dir}: no checkpoint yet, starting from step 0")
            return
        state = load_checkpoint(path)
        D.load_full_state(self.wrapped, self.optimizer, state["model"], state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # The saved optimizer and schedule carry the old peak lr: the resumed run's config decides it.
        peak = self.cfg.optim.lr
        self.scheduler.base_lrs = [peak] * len(self.optimizer.param_groups)
        for group in self.optimizer.param_groups:
            group["initial_lr"], group["lr"] = peak, peak * lr_factor(state["step"], self.cfg)
        for key in ("step", "tokens_seen", "elapsed", "best_val", "evals_since_best"):
            setattr(self, key, state[key])
        torch.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.last_checkpoint = path
        if self.env.is_main:
            print(f"resumed from {path} (step {self.step})")

    def export(self, model_state: dict[str, torch.Tensor]) -> Path:
        """The trained model as an lmforge model folder (loads with `lmforge generate`, converts to HF)."""
        from lmforge.models.io import save_model

        model = GPT(self.cfg.model)
        model.load_state_dict(model_state)
        extra = {"training": {"run": str(self.run_dir), "step": self.step, "tokens": self.tokens_seen}}
        return save_model(model, self.tokenizer, self.run_dir / "model", extra=extra)

    # ----------------------------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.log(record)

    def _eval_and_log(self) -> float | None:
        val = self.evaluate()
        if val is not None:
            self._log({"step": self.step, "val_loss": val, "val_ppl": math.exp(min(val, 50.0))})
            if val < self.best_val:
                self.best_val, self.evals_since_best = val, 0
            else:
                self.evals_since_best += 1
        return val

    def _out_of_time(self, started: float, elapsed0: float) -> bool:
        """Same answer on every rank (rank 0's clock decides), so all stop at the same step."""
        if self.cfg.max_minutes is None:
            return False
        late = torch.tensor(float(elapsed0 + time.monotonic() - started > 60 * self.cfg.max_minutes))
        if self.env.distributed:
            late = late.to(self.env.device)
            torch.distributed.broadcast(late, src=0)
        return bool(late.item())

    def run(self) -> dict[str, Any]:
        """Train until max_steps, the time budget or early stopping; returns a summary."""
        from tqdm import tqdm

        cfg, env = self.cfg, self.env
        flops_per_token = self.model.flops_per_token(cfg.data.seq_len)
        peak = peak_flops(env.device, self.dtype)
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.step,
            unit="step",
            disable=not (env.is_main and cfg.progress),
            dynamic_ncols=True,
        )
        started, elapsed0 = time.monotonic(), self.elapsed
        window_start, window_tokens = time.monotonic(), self.tokens_seen
        loss, val, stopped = math.nan, None, "max_steps"
        saved_at, state = (self.step if self.last_checkpoint else -1), None  # last checkpoint's step, state
        self.model.train()
        try:
            while self.step < cfg.max_steps:
                if self._out_of_time(started, elapsed0):
                    stopped = "max_minutes"
                    break
                loss, grad_norm = self.train_step()
                self.elapsed = elapsed0 + time.monotonic() - started
                bar.update(1)
                if self.on_step is not None:
                    self.on_step(self.step, loss)
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    now = time.monotonic()
                    tps = (self.tokens_seen - window_tokens) / max(now - window_start, 1e-9)
                    window_start, window_tokens = now, self.tokens_seen
                    record = {
                        "step": self.step,
                        "loss": loss,
                        "lr": self.last_lr,
                        "grad_norm": float(
                            grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
                        ),
                        "tokens": self.tokens_seen,
                        "tokens_per_s": tps,
                        "elapsed_s": self.elapsed,
                    }
                    if peak is not None:
                        record["mfu"] = tps * flops_per_token / (peak * env.world_size)
                    self._log(record)
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}")
                if self.step % cfg.eval_every == 0:
                    val = self._eval_and_log()
                    if val is not None and env.is_main and cfg.progress:
                        bar.write(f"step {self.step}: val loss {val:.4f}, perplexity {math.exp(val):.2f}")
                    if cfg.early_stop_patience and self.evals_since_best >= cfg.early_stop_patience:
                        stopped = "early_stop"
                        break
                    if val is not None and cfg.stop_at_val_loss is not None and val <= cfg.stop_at_val_loss:
                        stopped = "val_target"
                        break
                if self.step % cfg.ckpt_every == 0:
                    state, saved_at = self.save(), self.step
        finally:
            bar.close()
        if self.step % cfg.eval_every != 0 and stopped not in ("early_stop", "val_target"):
            val = self._eval_and_log()
        if saved_at != self.step:
            state = self.save()
        elif state is None:  # resumed at a finished step: nothing new to save, but export needs the weights
            state = self._state()
        model_dir = self.export(state["model"]) if cfg.export and env.is_main else None
        D.barrier(env)
        if self.metrics is not None:
            self.metrics.plot()
            self.metrics.close()
        return {
            "step": self.step,
            "loss": loss,
            "val_loss": val,
            "val_ppl": math.exp(val) if val is not None else None,
            "tokens": self.tokens_seen,
            "elapsed_s": self.elapsed,
            "stopped": stopped,
            "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "model_dir": str(model_dir) if model_dir else None,
        }
