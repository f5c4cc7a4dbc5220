"""The objective seam: a second objective, written here and unknown to lmforge, trains through the same
loop — the loss falls, it checkpoints, resumes bit-exactly, early-stops and reports its own metric — and
the loop's own pieces (loss weighting, clipping, logged perplexity) do what their formulas say."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor, nn

from lmforge.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from lmforge.config import ConfigError, load_config
from lmforge.models.gpt import GPT
from lmforge.models.losses import cross_entropy
from lmforge.train.config import TrainConfig
from lmforge.train.objective import Batch, Objective, build_objective
from lmforge.train.trainer import Trainer

VOCAB, LENGTH = 16, 8
TOY = [
    "model.n_layer=1",
    "model.n_head=2",
    "model.d_model=32",
    f"model.max_seq_len={LENGTH}",
    f"model.vocab_size={VOCAB}",
    "batch_size=16",
    "optim.lr=0.01",
    "optim.warmup_steps=2",
    "optim.decay_steps=60",  # the schedule does not depend on max_steps, so a run can be extended
    "eval_every=10",
    "log_every=1",
    "progress=false",
    "dtype=float32",  # exact arithmetic is asserted (auto trains in bf16 on AMX CPUs)
    "threads=1",
    "export=false",
    "objective=test_objective:FirstToken",  # by import path, as a user's YAML would name it
]


class FirstTokenModel(nn.Module):
    """A decoder's hidden states and a classifier head on the last position (which sees every token)."""

    def __init__(self, backbone: GPT):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.d_model, VOCAB)

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.head(self.backbone(input_ids, head=False)[:, -1])


class FirstToken(Objective):
    """Toy task: read a random sequence, name its first token. Batches are a function of (seed, step)."""

    def setup(self, cfg, env):
        self.cfg, self.rank, self.world = cfg, env.rank, env.world_size
        return cfg

    def build_model(self) -> nn.Module:
        return FirstTokenModel(GPT(self.cfg.model))

    def _batch(self, split: int, k: int) -> Batch:
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + split * 10_007 + k)
        rows = self.cfg.batch_size * self.cfg.grad_accum
        ids = torch.randint(0, VOCAB, (rows * self.world, LENGTH), generator=g)[self.rank * rows :][:rows]
        return {"input_ids": ids, "label": ids[:, 0].clone()}

    def train_batch(self, step: int) -> Batch:
        return self._batch(0, step)

    def val_batches(self):
        return [self._batch(1, k) for k in range(2)]

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        return cross_entropy(model(batch["input_ids"]), batch["label"])

    def eval_step(self, model, batch):
        logits = model(batch["input_ids"])
        correct = (logits.argmax(-1) == batch["label"]).sum()
        return cross_entropy(logits, batch["label"]), {"correct": correct, "total": torch.tensor(len(logits))}

    def val_metrics(self, val_loss, sums):
        return {"val_acc": sums["correct"] / sums["total"]}


def toy(tmp_path, name: str, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, None, [*TOY, f"out_dir={tmp_path / name}", *extra])


def test_second_objective_learns_checkpoints_resumes_exactly_and_early_stops(tmp_path):
    straight = Trainer(toy(tmp_path, "a", "max_steps=60", "ckpt_every=30")).run()
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    accs = [r["val_acc"] for r in records if "val_acc" in r]
    assert records[0]["loss"] > math.log(VOCAB) - 0.3 and straight["loss"] < 0.5 * records[0]["loss"]
    assert accs[0] < 0.5 < 0.7 < accs[-1] and straight["val_acc"] == accs[-1]
    assert [p.name for p in list_checkpoints(tmp_path / "a")] == ["step_00000030.pt", "step_00000060.pt"]

    Trainer(toy(tmp_path, "b", "max_steps=30", "ckpt_every=30")).run()
    resumed = Trainer(toy(tmp_path, "b", "max_steps=60", "ckpt_every=30"), resume=True)
    assert resumed.step == 30
    assert resumed.run()["loss"] == straight["loss"]
    a, b = (load_checkpoint(latest_checkpoint(tmp_path / r))["model"] for r in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)

    stopped = Trainer(toy(tmp_path, "c", "max_steps=100", "optim.lr=0", "early_stop_patience=2")).run()
    assert stopped["stopped"] == "early_stop" and stopped["step"] == 30  # evals at 10 (best), 20, 30


def test_objectives_by_name_and_import_path():
    assert type(build_objective("causal_lm")).__name__ == "CausalLM"
    assert isinstance(build_objective("test_objective:FirstToken"), FirstToken)
    with pytest.raises(Exception, match="cannot import"):
        build_objective("nowhere.module:Thing")


def test_step_minimises_the_mean_over_every_counted_target(tmp_path):
    """The step's loss is the formula's transcription on the global batch: micro-batches weighted by
    their counted targets (here unequal: labels -100 are ignored), clipping applied at grad_clip."""

    class Masked(FirstToken):
        def _batch(self, split, k):
            batch = super()._batch(split, k)
            batch["label"][: 3 * len(batch["label"]) // 4] = -100  # the first micro-batch counts none...
            batch["label"][0] = batch["input_ids"][0, 0]  # ...but one
            return batch

        def count(self, batch):
            return int((batch["label"] != -100).sum())

    cfg = toy(tmp_path, "m", "max_steps=1", "batch_size=8", "grad_accum=2", "optim.grad_clip=0.05")
    trainer = Trainer(cfg, objective=Masked())
    batch = trainer.objective.train_batch(0)
    reference = FirstToken.loss(trainer.objective, trainer.model, batch)  # one mean over all 16 rows
    reference.backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.model.parameters()]))
    trainer.optimizer.zero_grad(set_to_none=True)

    loss, grad_norm = trainer.train_step()
    assert loss == pytest.approx(reference.item(), rel=1e-6)
    assert float(grad_norm) == pytest.approx(norm.item(), rel=1e-5) and norm > 0.05
    # The update used the clipped gradient: after AdamW's first step, exp_avg = (1 - beta1) * grad.
    beta1 = cfg.optim.beta1
    used = [trainer.optimizer.state[p]["exp_avg"] / (1 - beta1) for p in trainer.model.parameters()]
    assert torch.linalg.vector_norm(torch.stack([g.norm() for g in used])).item() == pytest.approx(
        0.05, rel=1e-4
    )


def test_causal_lm_config_checks_its_window_before_work():
    with pytest.raises(ConfigError, match=r"data.seq_len \(64\) exceeds model.max_seq_len \(32\)"):
        load_config(TrainConfig, None, ["model.max_seq_len=32", "data.seq_len=64"])
    with pytest.raises(
        ConfigError, match=r"model.arch: expected one of \['gpt', 'bert', 'task', 'seq2seq'\], got 'encoder'"
    ):
        load_config(TrainConfig, None, ["model.arch=encoder"])  # a config of another family never fits
