"""The training loop: one process on a CPU up to many GPUs under ``torchrun``, same code path, for every
objective (``train/objective.py``): pretraining, fine-tuning and instruction tuning all run here.

Per optimizer step: ``grad_accum`` micro-batches (gradient all-reduce only on the last), each weighted by
its share of the step's counted targets; the loss checked for NaN/inf *before* the update; global-norm
clipping; AdamW; the lr schedule. The pieces around the step are components the loop calls: validation
(``validation.py``), checkpoints (``checkpointer.py``), the stop policy (``stopping.py``), metrics
(``metrics.py``) and distributed wrapping (``distributed.py``).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from lmforge.atomic import atomic_file
from lmforge.checkpoint import list_checkpoints
from lmforge.config import save_config
from lmforge.device import heap_allocator
from lmforge.errors import LmforgeError
from lmforge.train import distributed as D
from lmforge.train.adapt import adapt, merge_for_export
from lmforge.train.checkpointer import Checkpointer
from lmforge.train.config import TrainConfig
from lmforge.train.fast import describe, training_dtype
from lmforge.train.metrics import MetricsLog, Throughput, peak_flops, read_records
from lmforge.train.objective import Batch, Objective, build_objective
from lmforge.train.optim import build_optimizer, build_scheduler
from lmforge.train.progress import Progress
from lmforge.train.stopping import StopPolicy
from lmforge.train.validation import Validator, micro_batches


class NonFiniteLoss(LmforgeError):
    """The loss became NaN or infinite: the run stops before the bad update is applied."""


class Trainer:
    """Build everything a run needs from its config and objective, then ``run()`` it.

    ``objective`` defaults to the one ``cfg.objective`` names. ``on_step(step, loss)`` is called after
    each optimizer step (rank 0 and others alike); tests use it to inject faults.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        resume: bool = False,
        on_step: Callable[[int, float], None] | None = None,
        objective: Objective | None = None,
    ):
        self.env = env = D.init_distributed(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.run_dir = Path(cfg.out_dir)
        if not resume and list_checkpoints(self.run_dir):
            raise LmforgeError(f"{self.run_dir} already holds checkpoints: pass --resume, or another out_dir")
        self.objective = objective or build_objective(cfg.objective)
        self.cfg = cfg = self.objective.setup(cfg, env)
        self.on_step = on_step

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = self._build_model().to(env.device)
        self.wrapped = D.wrap_model(self.model, env, cfg.parallel)
        self.optimizer = build_optimizer(self.model, cfg, env.device)
        self.progress = Progress()
        self.scheduler = build_scheduler(self.optimizer, cfg, lambda: self.progress.horizon)
        self.dtype = training_dtype(cfg.dtype, env.device)
        amp = self.dtype != torch.float32
        self.autocast = torch.autocast(env.device.type, dtype=self.dtype) if amp else nullcontext()
        compile_ = torch.compile if cfg.compile else (lambda fn: fn)
        self._loss, self._eval = compile_(self._forward_loss), compile_(self._forward_eval)

        self.keeps_heap = cfg.keep_heap and env.device.type == "cpu"
        self.checkpointer = Checkpointer(cfg, env, self.wrapped, self.optimizer, self.scheduler)
        if resume:
            self.checkpointer.restore(self.progress)
        self.validator = Validator(self.objective, env, cfg.batch_size)
        self.metrics = None  # rank 0 writes the run folder; a finished run's stays as it is
        if env.is_main and not (resume and self.progress.step >= cfg.max_steps):
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
            self.settings = describe(env.device, self.dtype, self.keeps_heap, cfg.compile)
            with atomic_file(self.run_dir / "settings.json") as tmp:
                tmp.write_text(json.dumps(self.settings, indent=2) + "\n", encoding="utf-8")
            self.metrics = MetricsLog(self.run_dir, self.progress.step if resume else None)

    def _build_model(self) -> torch.nn.Module:
        """The objective's model with the run's trainable parameters chosen (LoRA, frozen layers)."""
        return adapt(self.objective.build_model(), self.cfg, self.objective.fresh)

    @property
    def step(self) -> int:
        return self.progress.step

    # ----------------------------------------------------------------------------------------------
    def _forward_loss(self, batch: Batch) -> torch.Tensor:
        with self.autocast:
            return self.objective.loss(self.wrapped, batch)

    def _forward_eval(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with self.autocast:
            return self.objective.eval_step(self.wrapped, batch)

    def _to_device(self, batch: Batch) -> Batch:
        if self.env.device.type != "cuda":
            return batch
        return {k: v.pin_memory().to(self.env.device, non_blocking=True) for k, v in batch.items()}

    def loss(self, batch: Batch) -> torch.Tensor:
        """The objective's loss of ``batch`` (moved to the device) under the run's precision."""
        return self._loss(self._to_device(batch))

    def eval_batch(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective's ``eval_step`` on ``batch`` (moved to the device) under the run's precision."""
        return self._eval(self._to_device(batch))

    def train_step(self) -> tuple[float, torch.Tensor]:
        """One optimizer step; returns the global mean loss and the gradient norm (before clipping).

        Micro-batch i contributes loss_i · n_i / N (n_i its counted targets, N those of the whole global
        batch) times the world size, since DDP averages gradients over ranks: the step minimises the
        mean over every counted target of the global batch, however the rows are split.
        """
        cfg, env = self.cfg, self.env
        batch = self.objective.train_batch(self.progress.step)
        micros = micro_batches(batch, cfg.batch_size)
        counts = [self.objective.count(m) for m in micros]
        n_global = D.all_reduce_sum(torch.tensor(float(sum(counts)), device=env.device), env).item()
        total = torch.zeros((), device=env.device)
        for i, (micro, n) in enumerate(zip(micros, counts)):
            with D.no_grad_sync(self.wrapped, skip=i < len(micros) - 1):
                loss = self.loss(micro) * (n * env.world_size / n_global)
                loss.backward()
            total += loss.detach()
        loss_value = D.all_reduce_mean(total, env).item()
        if not math.isfinite(loss_value):
            where = self.checkpointer.last or "none (no checkpoint was written yet)"
            raise NonFiniteLoss(
                f"loss is {loss_value} at step {self.progress.step + 1}; stopped before applying the update. "
                f"Last good checkpoint: {where}. Resume from it with --resume (a lower optim.lr may help)."
            )
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip or math.inf)
        self.last_lr = self.optimizer.param_groups[0]["lr"]  # the rate this update uses (for the log)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.step += 1
        self.progress.tokens_seen += sum(self.objective.tokens(m) for m in micros) * env.world_size
        return loss_value, grad_norm

    def evaluate(self) -> dict[str, float]:
        """Validation metrics ({} without val data), logged and fed to early stopping; a new best by the
        objective's ``monitor`` is exported at once when the objective keeps the best model."""
        metrics = self.validator(self.model, self.eval_batch)
        if metrics:
            name, mode = self.objective.monitor
            if name not in metrics:
                raise LmforgeError(f"the objective monitors {name}; validation gives {sorted(metrics)}")
            if self.progress.record_val(metrics[name], mode) and self.objective.keep_best:
                self._export_best()
            self._log({"step": self.progress.step, **metrics})
        return metrics

    def _export_best(self) -> None:
        """Export the model as it is now, the best so far (collective: every rank gathers its shard; rank 0
        writes). The RNG is left as it was, so keeping the best never changes what is trained."""
        if not self.cfg.export:
            return
        with torch.random.fork_rng(devices=[]):
            model_state, _ = D.full_state(self.wrapped, self.optimizer)
            if self.env.is_main:
                self.export(model_state)
        D.barrier(self.env)

    def export(self, model_state: dict[str, torch.Tensor]) -> Path | None:
        """The trained model as the objective saves it (e.g. an lmforge model folder in out_dir/model)."""
        model = self._build_model()
        model.load_state_dict(model_state)
        model = merge_for_export(model, self.cfg, self.run_dir)
        p = self.progress
        extra = {"training": {"run": str(self.run_dir), "step": p.step, "tokens": p.tokens_seen}}
        return self.objective.export(model, self.run_dir / "model", extra)

    def _log(self, record: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.log(record)

    def _log_step(self, loss: float, grad_norm: torch.Tensor, throughput: Throughput) -> None:
        p = self.progress
        if p.step % self.cfg.log_every and p.step not in (1, self.cfg.max_steps):
            return  # step 1 is always logged: the loss the run starts from
        norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        record = {"step": p.step, "loss": loss, "lr": self.last_lr, "grad_norm": float(norm)}
        self._log(
            {**record, "tokens": p.tokens_seen, **throughput.measure(p.tokens_seen), "elapsed_s": p.elapsed}
        )

    # ----------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train until max_steps, the time budget, early stopping, the val target or a stop signal
        (SIGTERM, Ctrl-C: a checkpoint at the end of the step); returns a summary."""
        cfg, p = self.cfg, self.progress
        if p.step >= cfg.max_steps:
            return self._already_complete()
        loss, val, stopped = math.nan, {}, None
        flops, peak = self.objective.flops_per_token(self.model), peak_flops(self.env.device, self.dtype)
        throughput = Throughput(p.tokens_seen, flops, peak, self.env.world_size)
        self.model.train()
        if self.metrics is not None and cfg.progress:
            chosen = ", ".join(f"{k}={v}" for k, v in self.settings.items())
            print(f"speed settings: {chosen}", file=sys.stderr)
        with (
            heap_allocator(self.keeps_heap),
            StopPolicy(cfg, self.env, p) as stop,
            self._progress_bar() as bar,
        ):
            while (stopped := stop.before_step()) is None:
                loss, grad_norm = self.train_step()
                stop.tick()
                stop.plan()
                self._after_step(loss, grad_norm, throughput, bar)
                if p.step % cfg.eval_every == 0:
                    val = self._evaluate_and_show(bar)
                    if stopped := stop.after_eval(val.get("val_loss")):
                        break
                if p.step % cfg.ckpt_every == 0:
                    self.checkpointer.save(p)
        if stopped in ("max_steps", "max_minutes") and p.step % cfg.eval_every:
            val = self.evaluate()
        return self._finish(stopped, loss, val)

    def _progress_bar(self):
        from tqdm import tqdm

        show = self.env.is_main and self.cfg.progress
        return tqdm(
            total=self.cfg.max_steps, initial=self.step, unit="step", disable=not show, dynamic_ncols=True
        )

    def _after_step(self, loss: float, grad_norm: torch.Tensor, throughput: Throughput, bar) -> None:
        if self.progress.horizon:  # a schedule fitted to the time budget: show its planned length
            bar.total = self.progress.horizon
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        if self.on_step is not None:
            self.on_step(self.step, loss)
        self._log_step(loss, grad_norm, throughput)

    def _evaluate_and_show(self, bar) -> dict[str, float]:
        val = self.evaluate()
        if val and self.env.is_main and self.cfg.progress:
            bar.write(f"step {self.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in val.items()))
        return val

    def _finish(self, stopped: str, loss: float, val: dict[str, float]) -> dict[str, Any]:
        """Final checkpoint (unless this step has one), export (unless a signal stopped the run: leave
        quickly), curves; the run's summary."""
        p, ckpt = self.progress, self.checkpointer
        state = ckpt.last_state if ckpt.saved_step == p.step and ckpt.last_state else ckpt.save(p)
        signalled = stopped.startswith("SIG")
        export = self.cfg.export and self.env.is_main and not signalled
        best = self.objective.keep_best and p.best_step is not None  # exported when it was evaluated
        model_dir = (self.run_dir / "model" if best else self.export(state["model"])) if export else None
        D.barrier(self.env)
        if self.metrics is not None:
            self.metrics.plot()
            self.metrics.close()
        if signalled and self.env.is_main:
            print(f"stopped by {stopped} at step {p.step}; checkpoint {ckpt.last}; continue with --resume")
        return self._summary(stopped, loss, val, model_dir)

    def _already_complete(self) -> dict[str, Any]:
        """A resumed run that had already reached max_steps: say so and change nothing."""
        records = read_records(self.run_dir / "metrics.jsonl")
        if self.env.is_main:
            done = f"step {self.step} of max_steps {self.cfg.max_steps}"
            print(f"{self.run_dir}: the run is complete ({done}); nothing to do")
        loss = next((r["loss"] for r in reversed(records) if "loss" in r), math.nan)
        val = next((r for r in reversed(records) if "val_loss" in r), {})
        val = {k: v for k, v in val.items() if k.startswith("val_")}
        model_dir = self.run_dir / "model"
        return self._summary("complete", loss, val, model_dir if model_dir.is_dir() else None)

    def _summary(
        self, stopped: str, loss: float, val: dict[str, float], model_dir: Path | None
    ) -> dict[str, Any]:
        p, last = self.progress, self.checkpointer.last
        return {
            "step": p.step,
            "loss": loss,
            "val_loss": val.get("val_loss"),
            **{k: v for k, v in val.items() if k != "val_loss"},
            "tokens": p.tokens_seen,
            "elapsed_s": p.elapsed,
            "stopped": stopped,
            "checkpoint": str(last) if last else None,
            "model_dir": str(model_dir) if model_dir else None,
        }
