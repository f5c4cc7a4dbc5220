"""Knowledge distillation: the loss against a literal transcription of its formula, and the objective
training a student through the one loop toward a teacher."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from lmforge.config import ConfigError
from lmforge.errors import LmforgeError
from lmforge.models.io import load_model
from lmforge.models.losses import cross_entropy, distillation
from lmforge.train.config import DistillConfig
from lmforge.train.distill import Distill
from lmforge.train.distributed import DistEnv
from lmforge.train.trainer import Trainer
from test_train import shards, tiny  # noqa: F401 (the shards fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_distillation_loss_is_its_formula():
    """alpha CE + (1 - alpha) T^2 mean_i sum_c p_c log(p_c / q_c), p = softmax(t/T), q = softmax(z/T),
    over the targets that count."""
    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(2, 5, 7, generator=g) * 2, torch.randn(2, 5, 7, generator=g) * 2
    y = torch.randint(0, 7, (2, 5), generator=g)
    y[0, 1] = y[1, 4] = -100
    temperature, alpha = 3.0, 0.3
    hard, soft, n = 0.0, 0.0, 0
    for b in range(2):
        for i in range(5):
            if y[b, i] == -100:
                continue
            n += 1
            hard -= math.log(torch.softmax(z[b, i], -1)[y[b, i]].item())
            p, q = torch.softmax(t[b, i] / temperature, -1), torch.softmax(z[b, i] / temperature, -1)
            soft += sum(p[c].item() * math.log(p[c].item() / q[c].item()) for c in range(7))
    want = alpha * hard / n + (1 - alpha) * temperature**2 * soft / n
    assert math.isclose(distillation(z, t, y, temperature, alpha).item(), want, rel_tol=1e-5)
    assert math.isclose(distillation(z, z, y, 2.0, 0.0).item(), 0.0, abs_tol=1e-6)  # its own teacher


def test_a_student_learns_from_its_teacher_through_the_loop(shards, tmp_path):  # noqa: F811
    teacher = tmp_path / "teacher"
    Trainer(tiny(shards, teacher, "max_steps=60", "eval_every=60")).run()
    base = ["max_steps=30", "eval_every=30", "model.n_layer=1", "model.d_model=16"]
    runs = {}
    for name, extra in (
        ("alone", []),
        ("distilled", ["objective=distill", f"distill.teacher={teacher / 'model'}"]),
    ):
        Trainer(tiny(shards, tmp_path / name, *base, "distill.alpha=0.5", *extra)).run()
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        runs[name] = records
    distilled = [r["loss"] for r in runs["distilled"] if "loss" in r]
    assert distilled[-1] < distilled[0] - 0.5
    # the val loss is the plain CE in both runs: the numbers compare
    val = {name: [r["val_loss"] for r in records if "val_loss" in r][-1] for name, records in runs.items()}
    assert all(math.isfinite(v) for v in val.values())
    assert (tmp_path / "distilled" / "model" / "config.json").is_file()
    # the objective's training loss is the formula on student and teacher logits over the tokenizer's
    # vocabulary; its val loss the plain cross-entropy
    cfg = tiny(shards, tmp_path / "probe", *base, "objective=distill", f"distill.teacher={teacher / 'model'}")
    cfg = dataclasses.replace(cfg, distill=DistillConfig(str(teacher / "model"), alpha=0.3, temperature=3.0))
    objective = Distill()
    cfg = objective.setup(cfg, DistEnv(0, 0, 1, torch.device("cpu")))
    student, batch = objective.build_model(), objective.train_batch(0)
    teacher_model, _ = load_model(teacher / "model")
    x, y, vocab = batch["input_ids"], batch["targets"], objective.shards.vocab_size
    with torch.no_grad():
        want = distillation(student(x)[..., :vocab], teacher_model(x)[..., :vocab], y, 3.0, 0.3)
        torch.testing.assert_close(objective.loss(student, batch), want)
        assert not torch.isclose(want, cross_entropy(student(x), y))  # the teacher counts
        torch.testing.assert_close(objective.eval_step(student, batch)[0], cross_entropy(student(x), y))


def test_distillation_settings_are_checked(shards, tmp_path, bpe_tokenizer):  # noqa: F811
    with pytest.raises(ConfigError, match=r"distill\.teacher"):
        tiny(shards, tmp_path / "x", "objective=distill")
    with pytest.raises(ConfigError, match="alpha"):
        tiny(shards, tmp_path / "x", "objective=distill", "distill.teacher=t", "distill.alpha=2")
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    from lmforge.models.gpt import GPT, GPTConfig
    from lmforge.models.io import save_model
    from lmforge.tokenizer.core import Tokenizer

    other = Tokenizer(HFTokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token="a")))
    save_model(
        GPT(GPTConfig(vocab_size=2, max_seq_len=32, n_layer=1, n_head=1, d_model=8)), other, tmp_path / "t"
    )
    cfg = tiny(
        shards, tmp_path / "run", "objective=distill", f"distill.teacher={tmp_path / 't'}", "max_steps=2"
    )
    with pytest.raises(LmforgeError, match="another tokenizer"):
        Trainer(cfg).run()
