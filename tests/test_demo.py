"""`lmforge demo` end to end on a shrunken model: corpus -> tokenizer -> shards -> training -> samples."""

from __future__ import annotations

import json

from lmforge.cli import main
from lmforge.models.io import load_model

SMALL = [
    "model.n_layer=2",
    "model.d_model=128",
    "max_steps=60",
    "eval_every=30",
    "log_every=1",
    "optim.warmup_steps=5",
    "threads=1",
    "progress=false",
]


def test_demo_leaves_a_complete_run_folder(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--minutes", "1", "--out", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "val perplexity" in printed and "samples" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 60 and summary["tokens"] > 100_000
    assert summary["final_loss"] < summary["first_loss"] - 1.0  # the loss clearly falls
    assert summary["val_perplexity"] < 2048 / 4  # well below uniform over the vocabulary
    run = out / "run"
    for name in ("config.yaml", "metrics.jsonl", "loss.png", "model/model.safetensors"):
        assert (run / name).is_file(), name
    assert list((run / "checkpoints").glob("step_*.pt"))
    samples = (out / "samples.txt").read_text()
    assert samples.startswith("The") and len(samples) > 100
    model, tokenizer = load_model(run / "model")
    assert tokenizer.vocab_size == 2048 and model.config.vocab_size == 2048


def test_a_second_demo_reuses_tokenizer_and_shards_and_trains_afresh(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--minutes", "1", "--out", str(out), *SMALL, "max_steps=8", "eval_every=4", "log_every=5"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "reused" not in first
    (out / "run" / "notes.txt").write_text("mine")  # not the demo's: must survive
    assert main(args) == 0
    second = capsys.readouterr().out
    assert f"tokenizer: reused {out / 'tokenizer'}" in second and f"shards: reused {out / 'shards'}" in second
    assert "an earlier demo run is in" in second and "training a fresh one" in second
    assert json.loads((out / "summary.json").read_text())["steps"] == 8
    assert (out / "run" / "notes.txt").read_text() == "mine"
    records = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 5, 8]  # one run; step 1 always logged
