"""The pretraining loop on a tiny model: the loss falls, resume is exact (also after SIGKILL), a NaN
stops the run naming the step and the last good checkpoint, and the run folder has what it promises."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import corpus_text
from lmforge.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from lmforge.cli import main
from lmforge.config import ConfigError, load_config
from lmforge.errors import LmforgeError
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.tokenizer.shards import build_shards
from lmforge.train.config import TrainConfig
from lmforge.train.optim import lr_factor, param_groups
from lmforge.train.trainer import NonFiniteLoss, Trainer

TINY = [
    "model.n_layer=2",
    "model.n_head=2",
    "model.d_model=32",
    "model.max_seq_len=32",
    "data.seq_len=32",
    "batch_size=8",
    "optim.lr=0.003",
    "optim.warmup_steps=4",
    "eval_batches=4",
    "log_every=1",
    "progress=false",
    "threads=1",
]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, bpe_tokenizer) -> Path:
    out = tmp_path_factory.mktemp("train") / "shards"
    docs = [p for p in corpus_text()[:150_000].split("\n\n") if p.strip()]
    build_shards(docs, bpe_tokenizer, out, val_fraction=0.1, progress=False)
    return out


def tiny(shards: Path, out: Path, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, None, [*TINY, f"data.shards={shards}", f"out_dir={out}", *extra])


def test_loss_falls_and_run_folder_is_complete(shards, tmp_path):
    cfg = tiny(shards, tmp_path / "run", "max_steps=60", "eval_every=20", "ckpt_every=20", "keep_last=2")
    summary = Trainer(cfg).run()
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    assert train[0]["loss"] > math.log(300) - 0.3  # starts near uniform over the vocabulary
    assert summary["loss"] < train[0]["loss"] - 1.5
    assert len(vals) == 3 and vals[0] > vals[1] > vals[2] and summary["val_loss"] == vals[-1]
    assert {"lr", "grad_norm", "tokens", "tokens_per_s"} <= set(train[-1])
    assert train[-1]["tokens"] == 60 * 8 * 32
    # Resolved config (vocab from the tokenizer, padded to 64), curve, TensorBoard, last-K checkpoints.
    resolved = load_config(TrainConfig, run / "config.yaml")
    assert resolved.model.vocab_size == 320 and resolved.max_steps == 60
    assert (run / "loss.png").stat().st_size > 1000
    assert any((run / "tensorboard").iterdir())
    assert [p.name for p in list_checkpoints(run)] == ["step_00000040.pt", "step_00000060.pt"]
    # The exported model loads, generates, and converts to Hugging Face.
    from lmforge.hf.convert import to_hf
    from lmforge.infer.generate import generate_ids
    from lmforge.infer.sampling import GenerationConfig
    from lmforge.models.io import load_model

    model, tok = load_model(run / "model")
    greedy = GenerationConfig(max_new_tokens=5, temperature=0, stop_at_eos=False)
    new = generate_ids(model, [tok.encode("The")], greedy)[0]
    assert len(new) == 5 and all(0 <= t < tok.vocab_size for t in new)
    to_hf(run / "model", tmp_path / "hf")
    assert (tmp_path / "hf" / "config.json").is_file()


def test_training_continues_from_a_model_folder(shards, tmp_path):
    """task.model: the run starts from that folder's weights and config (not model.*, not random)."""
    Trainer(tiny(shards, tmp_path / "a", "max_steps=40", "eval_every=40", "ckpt_every=40")).run()
    start = tmp_path / "a" / "model"
    frozen = ["task.model=" + str(start), "model.n_layer=5", "optim.lr=0", "max_steps=2"]
    settings = [*TINY, f"data.shards={shards}", f"out_dir={tmp_path / 'b'}", "eval_every=2", *frozen]
    assert main(["pretrain", *settings]) == 0  # no --config: the folder gives the model
    first = json.loads((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] < math.log(300) - 1.0  # a trained model's loss from the first step (random: ~ln V)
    from lmforge.models.io import load_model

    (a, _), (b, _) = load_model(start), load_model(tmp_path / "b" / "model")
    assert b.config == a.config  # n_layer=5 ignored: the folder decides the architecture
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ConfigError, match=r"exceeds task\.model's 32"):
        cfg = tiny(
            shards, tmp_path / "c", "task.model=" + str(start), "model.max_seq_len=64", "data.seq_len=64"
        )
        Trainer(cfg).run()


@pytest.mark.parametrize("dtype", ["auto", "bfloat16"])  # bf16: autocast, AMX machines' default
def test_resume_matches_an_uninterrupted_run(shards, tmp_path, dtype):
    common = ("optim.decay_steps=20", "ckpt_every=5", "eval_every=5", f"dtype={dtype}")
    straight = Trainer(tiny(shards, tmp_path / "a", "max_steps=20", *common)).run()
    Trainer(tiny(shards, tmp_path / "b", "max_steps=10", *common)).run()
    resumed = Trainer(tiny(shards, tmp_path / "b", "max_steps=20", *common), resume=True).run()
    assert resumed["step"] == 20
    assert abs(resumed["loss"] - straight["loss"]) < 1e-6
    assert abs(resumed["val_loss"] - straight["val_loss"]) < 1e-6
    a = load_checkpoint(latest_checkpoint(tmp_path / "a"))["model"]
    b = load_checkpoint(latest_checkpoint(tmp_path / "b"))["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
    # metrics.jsonl reads as one run: one record per step, in order.
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 21))
    assert [r["step"] for r in records if "val_loss" in r] == [5, 10, 15, 20]


def test_sigkill_then_resume_matches_an_uninterrupted_run(shards, tmp_path):
    """Kill a real `lmforge pretrain` process with SIGKILL mid-run; --resume continues exactly."""
    run = tmp_path / "killed"
    fixed = [*TINY, f"data.shards={shards}", "optim.decay_steps=200", "ckpt_every=4", "eval_every=1000"]
    (tmp_path / "cfg.yaml").write_text("{}\n")
    cmd = [sys.executable, "-m", "lmforge", "pretrain", "--config", str(tmp_path / "cfg.yaml"), *fixed]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*cmd, f"out_dir={run}", "max_steps=100000", "export=false"], env=env)
    deadline = time.monotonic() + 120
    while not list_checkpoints(run) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.1)  # let it run on past the checkpoint, mid-step
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = int(latest_checkpoint(run).stem.split("_")[1])
    target = killed_at + 4
    assert main(["pretrain", "--resume", str(run), f"max_steps={target}"]) == 0
    straight = Trainer(tiny(shards, tmp_path / "straight", f"max_steps={target}", *fixed[len(TINY) :])).run()
    resumed = load_checkpoint(latest_checkpoint(run))
    assert resumed["step"] == target
    ref = load_checkpoint(latest_checkpoint(tmp_path / "straight"))["model"]
    assert all(torch.allclose(resumed["model"][k], ref[k], atol=1e-6, rtol=0) for k in ref)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, target + 1))
    assert abs(records[-2]["loss"] - straight["loss"]) < 1e-6 and records[-2]["step"] == target


def test_nan_loss_stops_naming_step_and_last_good_checkpoint(shards, tmp_path):
    def poison(step: int, loss: float) -> None:
        if step == 7:
            with torch.no_grad():
                trainer.model.blocks[0].mlp.fc.weight.fill_(float("nan"))

    trainer = Trainer(tiny(shards, tmp_path / "nan", "max_steps=20", "ckpt_every=3"), on_step=poison)
    with pytest.raises(NonFiniteLoss, match=r"loss is nan at step 8.*step_00000006\.pt"):
        trainer.run()
    good = load_checkpoint(latest_checkpoint(tmp_path / "nan"))
    assert good["step"] == 6 and all(torch.isfinite(t).all() for t in good["model"].values())


def test_early_stopping(shards, tmp_path):
    cfg = tiny(shards, tmp_path / "es", "max_steps=50", "optim.lr=0", "eval_every=2", "early_stop_patience=2")
    summary = Trainer(cfg).run()
    assert summary["stopped"] == "early_stop" and summary["step"] == 6  # evals at 2 (best), 4, 6


def test_refuses_to_overwrite_a_run_and_rejects_unknown_keys(shards, tmp_path, capsys):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("{}\n")
    args = [
        "pretrain",
        "--config",
        str(cfg_file),
        *TINY,
        f"data.shards={shards}",
        f"out_dir={tmp_path / 'r'}",
    ]
    assert main([*args, "max_steps=2", "export=false"]) == 0
    assert main([*args, "max_steps=2"]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert main([*args, "optim.learning_rate=1"]) == 2
    assert "unknown config key optim.learning_rate" in capsys.readouterr().err


def test_param_groups_and_schedule():
    model = GPT(GPTConfig(vocab_size=64, max_seq_len=16, n_layer=2, n_head=2, d_model=16))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}  # tied lm_head appears once, as tok_emb
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert sorted(names[id(p)] for p in decay["params"]) == sorted(
        f"blocks.{i}.{m}.weight" for i in range(2) for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
    )
    assert {"tok_emb.weight", "pos_emb.weight", "norm_f.weight", "norm_f.bias"} <= {
        names[id(p)] for p in no_decay["params"]
    }
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)
    cfg = load_config(TrainConfig, None, ["max_steps=110", "optim.warmup_steps=10", "optim.lr=0.001"])
    factors = [lr_factor(s, cfg) for s in range(110)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))  # cosine never rises
    assert lr_factor(110, cfg) == pytest.approx(0.1)  # min_lr = lr / 10


def test_logged_lr_is_the_rate_used_and_resume_takes_a_new_peak_lr(shards, tmp_path):
    run = tmp_path / "lr"
    first = tiny(shards, run, "max_steps=4", "optim.decay_steps=20", "ckpt_every=4", "export=false")
    Trainer(first).run()
    resumed = tiny(shards, run, "max_steps=6", "optim.decay_steps=20", "optim.lr=0.0003", "export=false")
    Trainer(resumed, resume=True).run()
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    lrs = {r["step"]: r["lr"] for r in records if "lr" in r}
    # step k's update used lr(k - 1): warmup starts at lr/warmup, not one step ahead
    assert lrs[1] == pytest.approx(0.003 * lr_factor(0, first))
    assert lrs[4] == pytest.approx(0.003 * lr_factor(3, first))
    assert lrs[5] == pytest.approx(0.0003 * lr_factor(4, resumed))  # the resumed config's lr, not the saved
    assert lrs[6] == pytest.approx(0.0003 * lr_factor(5, resumed))


def test_time_budget_and_val_target_stop_the_run(shards, tmp_path):
    timed = Trainer(tiny(shards, tmp_path / "t", "max_steps=50", "max_minutes=0")).run()
    assert timed["stopped"] == "max_minutes" and timed["step"] == 0
    target_cfg = tiny(shards, tmp_path / "v", "max_steps=50", "eval_every=2", "stop_at_val_loss=100")
    target = Trainer(target_cfg).run()
    assert target["stopped"] == "val_target" and target["step"] == 2 and target["val_loss"] < 100
    with pytest.raises(ConfigError, match="log_every must be positive"):
        tiny(shards, tmp_path / "x", "log_every=0")


def test_training_loss_is_the_cross_entropy_formula_and_val_ppl_its_exp(shards, tmp_path):
    """The loss the loop minimises is -1/N sum_t log softmax(z_t)[x_{t+1}], written out here with a loop
    over positions; the logged val_ppl is exp(val_loss)."""
    trainer = Trainer(tiny(shards, tmp_path / "f", "max_steps=2", "eval_every=2", "export=false"))
    batch = trainer.objective.train_batch(0)
    with torch.no_grad():
        logits = trainer.model(batch["input_ids"]).double()
        terms = [
            -(logits[b, t, batch["targets"][b, t]] - logits[b, t].exp().sum().log())
            for b in range(logits.size(0))
            for t in range(logits.size(1))
        ]
        assert trainer.loss(batch).item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    trainer.run()
    records = [json.loads(line) for line in (tmp_path / "f" / "metrics.jsonl").read_text().splitlines()]
    (val,) = [r for r in records if "val_loss" in r]
    assert val["val_ppl"] == pytest.approx(math.exp(val["val_loss"]), rel=1e-12)


def test_resume_after_a_crash_logs_each_step_once_and_a_finished_run_changes_nothing(shards, tmp_path):
    """TensorBoard mirrors metrics.jsonl after a resume (its own purge-on-restart dropped steps 3 and 6
    and kept 5 twice); resuming a finished run says so and writes nothing."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb"
    common = ["max_steps=6", "ckpt_every=3", "eval_every=1000", "optim.decay_steps=20"]

    def crash(step: int, loss: float) -> None:
        if step == 5:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        Trainer(tiny(shards, run, *common), on_step=crash).run()
    Trainer(tiny(shards, run, *common), resume=True).run()
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4, 5, 6]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]

    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}
    summary = Trainer(tiny(shards, run, *common), resume=True).run()
    assert summary["stopped"] == "complete" and summary["loss"] == records[-2]["loss"]
    assert summary["val_loss"] == records[-1]["val_loss"]
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()} == before


def flip_byte_inside(path: Path, tensor: torch.Tensor) -> None:
    """Damage one byte in the middle of ``tensor``'s data where it is stored in ``path``."""
    data = bytearray(path.read_bytes())
    at = data.find(tensor.detach().contiguous().numpy().tobytes())
    assert at > 0
    data[at + tensor.numel() * tensor.element_size() // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_damaged_checkpoint_is_skipped_on_resume_and_a_damaged_model_refused(shards, tmp_path, capsys):
    run = tmp_path / "dmg"
    common = ["ckpt_every=3", "eval_every=1000", "optim.decay_steps=20"]
    first = Trainer(tiny(shards, run, "max_steps=6", *common))
    first.run()
    newest = latest_checkpoint(run)
    flip_byte_inside(newest, first.model.tok_emb.weight)
    with pytest.raises(LmforgeError, match=r"step_00000006\.pt: checksum mismatch"):
        load_checkpoint(newest)
    resumed = Trainer(tiny(shards, run, "max_steps=8", *common), resume=True)
    assert resumed.step == 3
    assert "skipping checkpoint step_00000006.pt" in capsys.readouterr().err
    resumed.run()
    straight = Trainer(tiny(shards, tmp_path / "ok", "max_steps=8", *common)).run()
    assert load_checkpoint(latest_checkpoint(run))["step"] == 8
    assert (
        abs(json.loads((run / "metrics.jsonl").read_text().splitlines()[-2])["loss"] - straight["loss"])
        < 1e-6
    )

    from lmforge.models.io import load_model

    weights = run / "model" / "model.safetensors"
    model, _ = load_model(run / "model")
    flip_byte_inside(weights, model.blocks[0].mlp.fc.weight)
    with pytest.raises(LmforgeError, match=r"model\.safetensors: checksum mismatch"):
        load_model(run / "model")


def test_sigterm_checkpoints_the_step_and_resume_matches(shards, tmp_path):
    """A scheduler's preemption (SIGTERM) mid-run: a checkpoint at the end of that step, a clean exit,
    and --resume ends where an uninterrupted run does."""
    run = tmp_path / "term"
    fixed = [*TINY, f"data.shards={shards}", "optim.decay_steps=200", "ckpt_every=1000", "eval_every=1000"]
    (tmp_path / "cfg.yaml").write_text("{}\n")
    cmd = [sys.executable, "-m", "lmforge", "pretrain", "--config", str(tmp_path / "cfg.yaml"), *fixed]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*cmd, f"out_dir={run}", "max_steps=100000"], env=env, stdout=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").is_file() or len((run / "metrics.jsonl").read_text().splitlines()) < 3:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopped by SIGTERM" in out
    stopped_at = load_checkpoint(latest_checkpoint(run))["step"]
    assert stopped_at >= 3 and not (run / "model").exists()
    target = stopped_at + 3
    assert main(["pretrain", "--resume", str(run), f"max_steps={target}"]) == 0
    straight = Trainer(tiny(shards, tmp_path / "straight", f"max_steps={target}", *fixed[len(TINY) :])).run()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, target + 1))
    assert abs(records[-2]["loss"] - straight["loss"]) < 1e-6


def test_a_schedule_fitted_to_the_time_budget_ends_with_the_time(shards, tmp_path):
    """fit_schedule_to_time: the run trains until max_minutes (never stopping early) and the cosine has
    reached its floor by then, whatever the machine's speed."""
    cfg = tiny(
        shards,
        tmp_path / "t",
        "max_minutes=0.05",
        "fit_schedule_to_time=true",
        "max_steps=100000",
        "eval_every=25",
        "optim.min_lr=0.0003",
        "export=false",
    )
    summary = Trainer(cfg).run()
    records = [json.loads(line) for line in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if "lr" in r]
    assert summary["stopped"] == "max_minutes" and summary["elapsed_s"] >= 3.0 and len(lrs) > 20
    assert max(lrs) == pytest.approx(0.003) and lrs[-1] < 0.0003 + 0.1 * (0.003 - 0.0003)
    with pytest.raises(ConfigError, match="fit_schedule_to_time needs max_minutes"):
        tiny(shards, tmp_path / "u", "fit_schedule_to_time=true")


def test_a_val_split_too_short_is_said_at_shard_time_and_train_start(bpe_tokenizer, tmp_path, capsys):
    docs = [p for p in corpus_text()[:60_000].split("\n\n") if p.strip()] + ["The end."]
    build_shards(docs, bpe_tokenizer, tmp_path / "s", val_fraction=0.0001, progress=False)
    assert "warning: the val split holds" in capsys.readouterr().err
    cfg = tiny(tmp_path / "s", tmp_path / "r", "max_steps=2", "data.seq_len=32", "export=false")
    assert Trainer(cfg).run()["val_loss"] is None
    assert "holds no window of 33 tokens: this run has no validation" in capsys.readouterr().err
    with pytest.raises(LmforgeError, match="early stopping and stop_at_val_loss cannot work"):
        Trainer(tiny(tmp_path / "s", tmp_path / "r2", "max_steps=2", "early_stop_patience=2"))


def test_resume_of_a_mistyped_folder_says_it_does_not_exist(tmp_path, capsys):
    assert main(["pretrain", "--resume", str(tmp_path / "rnus" / "x")]) == 2
    assert "rnus/x: no such run folder" in capsys.readouterr().err


def test_ctrl_c_ends_the_run_at_the_end_of_the_step_with_a_checkpoint(shards, tmp_path):
    def press_ctrl_c(step: int, loss: float) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    cfg = tiny(shards, tmp_path / "int", "max_steps=50", "ckpt_every=1000", "eval_every=1000")
    summary = Trainer(cfg, on_step=press_ctrl_c).run()
    assert summary["stopped"] == "SIGINT" and summary["step"] == 3 and summary["model_dir"] is None
    assert load_checkpoint(latest_checkpoint(tmp_path / "int"))["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
