"""Masked-LM pretraining through the one loop: BERT's corruption in the right proportions (a statistical
test), batches that depend on (seed, step) only, a loss that falls on real text, NSP as an option, and an
exported encoder that loads as a model folder."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import corpus_text
from lmforge.config import load_config
from lmforge.models.bert import Bert
from lmforge.models.io import load_model
from lmforge.models.losses import IGNORE_INDEX
from lmforge.tokenizer.shards import build_shards
from lmforge.tokenizer.train import train_wordpiece
from lmforge.train.config import MaskingConfig, TrainConfig
from lmforge.train.masked_lm import mask_tokens
from lmforge.train.trainer import Trainer

TINY = [
    "objective=mlm",
    "model.arch=bert",
    "model.n_layer=2",
    "model.n_head=2",
    "model.d_model=64",
    "model.d_ff=128",
    "model.max_seq_len=64",
    "model.dropout=0.0",
    "data.seq_len=64",
    "batch_size=16",
    "optim.lr=0.002",
    "optim.warmup_steps=5",
    "eval_batches=4",
    "log_every=1",
    "progress=false",
    "threads=1",
]


@pytest.fixture(scope="module")
def wordpiece_shards(tmp_path_factory):
    docs = [p for p in corpus_text()[:200_000].split("\n\n") if p.strip()]
    out = tmp_path_factory.mktemp("mlm") / "shards"
    build_shards(docs, train_wordpiece(docs, vocab_size=600), out, val_fraction=0.1, progress=False)
    return out


def test_corruption_proportions_are_berts():
    """15 % chosen; of those 80 % [MASK], 10 % random, 10 % kept: each share within 4 standard errors."""
    n, vocab, mask_id = 400_000, 1000, 999
    ids = np.random.default_rng(0).integers(0, 998, n)
    maskable = np.ones(n, dtype=bool)
    maskable[::10] = False  # e.g. [CLS]/[SEP]: never chosen
    corrupted, targets = mask_tokens(ids, maskable, mask_id, vocab, np.random.default_rng(1), MaskingConfig())
    chosen = targets != IGNORE_INDEX
    assert not chosen[~maskable].any() and (targets[chosen] == ids[chosen]).all()
    assert (corrupted[~chosen] == ids[~chosen]).all()  # only chosen positions change

    def within(share: float, p: float, count: int) -> bool:
        return abs(share - p) < 4 * math.sqrt(p * (1 - p) / count)

    m = int(maskable.sum())
    assert within(chosen.sum() / m, 0.15, m)
    c = int(chosen.sum())
    masked = (corrupted[chosen] == mask_id).mean()
    replaced = ((corrupted[chosen] != mask_id) & (corrupted[chosen] != ids[chosen])).mean()
    assert within(masked, 0.8, c)
    assert within(
        replaced, 0.1 * (1 - 1 / vocab) - 0.1 / vocab, c
    )  # a random token can be the same one or [MASK]


def test_mlm_pretraining_learns_exports_an_encoder_and_batches_are_reproducible(wordpiece_shards, tmp_path):
    cfg = load_config(
        TrainConfig,
        None,
        [
            *TINY,
            f"data.shards={wordpiece_shards}",
            f"out_dir={tmp_path / 'r'}",
            "max_steps=60",
            "eval_every=30",
        ],
    )
    trainer = Trainer(cfg)
    again = Trainer(cfg.__class__(**{**cfg.__dict__, "out_dir": str(tmp_path / "r2")}))
    a, b = trainer.objective.train_batch(7), again.objective.train_batch(7)
    assert all(torch.equal(a[k], b[k]) for k in a)
    masked = a["targets"] != IGNORE_INDEX
    assert (
        0.10 < masked.float().mean() < 0.20
        and (a["input_ids"][:, 0] == trainer.objective.tokenizer.cls_id).all()
    )
    summary = trainer.run()
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    first = records[0]["loss"]
    assert first > math.log(600) - 1.0 and summary["loss"] < first - 0.8
    vals = [r for r in records if "val_mlm_acc" in r]
    assert vals[-1]["val_mlm_acc"] > 10 / 600 and vals[-1]["val_ppl"] == pytest.approx(
        math.exp(vals[-1]["val_loss"])
    )
    model, tokenizer = load_model(tmp_path / "r" / "model")
    assert isinstance(model, Bert) and model.mlm is not None and tokenizer.mask_id is not None


def test_the_mlm_head_runs_on_the_chosen_positions_only(wordpiece_shards, tmp_path):
    """The loss reads the ~15 % chosen positions alone, so the vocabulary projection runs on those only
    (over all positions it costs about as much as the encoder); loss and gradients are those of the
    full logits."""
    cfg = load_config(TrainConfig, None, [*TINY, f"data.shards={wordpiece_shards}", f"out_dir={tmp_path}"])
    trainer = Trainer(cfg)
    objective, model = trainer.objective, trainer.model
    batch = objective.train_batch(3)
    rows = []
    model.encoder.mlm.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[:-1]))
    loss = objective.loss(model, batch)
    chosen = batch["targets"] != IGNORE_INDEX
    assert rows == [(int(chosen.sum()),)]
    got = torch.autograd.grad(loss, model.encoder.tok_emb.weight)[0]
    hidden = model.encoder(batch["input_ids"], token_type_ids=batch["token_type_ids"], head=False)
    full = torch.nn.functional.cross_entropy(
        model.encoder.mlm(hidden).flatten(0, 1), batch["targets"].flatten(), ignore_index=IGNORE_INDEX
    )
    want = torch.autograd.grad(full, model.encoder.tok_emb.weight)[0]
    assert loss.item() == pytest.approx(full.item(), rel=1e-6)
    assert torch.allclose(got, want, atol=1e-7, rtol=1e-5)


def test_next_sentence_prediction_option(wordpiece_shards, tmp_path):
    cfg = load_config(
        TrainConfig,
        None,
        [
            *TINY,
            f"data.shards={wordpiece_shards}",
            f"out_dir={tmp_path / 'n'}",
            "max_steps=4",
            "eval_every=4",
            "mlm.nsp=true",
        ],
    )
    trainer = Trainer(cfg)
    batch = trainer.objective.train_batch(0)
    sep = trainer.objective.tokenizer.sep_id
    segments = batch["token_type_ids"]
    assert (
        (batch["input_ids"][:, -1] == sep).all()
        and (segments[:, 0] == 0).all()
        and (segments[:, -1] == 1).all()
    )
    assert (segments.diff(dim=1) >= 0).all()  # A then B
    last_of_a = (segments == 0).sum(1) - 1
    assert (batch["input_ids"][torch.arange(len(segments)), last_of_a] == sep).all()  # [SEP] ends A
    assert 0 < batch["is_next"].float().mean() < 1
    summary = trainer.run()
    assert 0.0 <= summary["val_nsp_acc"] <= 1.0 and trainer.model.nsp is not None


def test_pretrain_cli_reports_whatever_val_metrics_the_objective_gives(wordpiece_shards, tmp_path, capsys):
    """With NSP there is no val_ppl: the CLI's summary line prints the objective's own val metrics."""
    from lmforge.cli import main

    (tmp_path / "c.yaml").write_text("{}\n")
    args = ["pretrain", "--config", str(tmp_path / "c.yaml"), *TINY, f"data.shards={wordpiece_shards}"]
    assert main([*args, f"out_dir={tmp_path / 'r'}", "max_steps=2", "eval_every=2", "mlm.nsp=true"]) == 0
    assert "val_nsp_acc" in capsys.readouterr().out


def test_an_encoder_from_nothing_but_the_demo_corpus_through_the_cli(tmp_path, capsys):
    """A fresh machine (no data, no pretrained model): WordPiece tokenizer, shards, masked-LM pretraining
    and a classifier fine-tuned on the result, each a CLI verb."""
    from lmforge.cli import main
    from lmforge.train.demo import demo_corpus

    (tmp_path / "corpus.txt").write_text("\n\n".join(demo_corpus()[:30]), encoding="utf-8")
    tok, shards, run = tmp_path / "tok", tmp_path / "shards", tmp_path / "mlm"
    corpus = ["--input", str(tmp_path / "corpus.txt")]
    assert (
        main(["tokenizer", "train", *corpus, "--kind", "wordpiece", "--vocab-size", "800", "--out", str(tok)])
        == 0
    )
    assert main(["shards", *corpus, "--tokenizer", str(tok), "--out", str(shards), "val_fraction=0.1"]) == 0
    assert (
        main(
            [
                "pretrain",
                "--config",
                "bert-small",
                *TINY,
                f"data.shards={shards}",
                f"out_dir={run}",
                "max_steps=3",
                "eval_every=3",
            ]
        )
        == 0
    )
    rows = ["label\tcontent"] + [
        f"{i % 2}\t{'a for loop' if i % 2 else 'the class body'} {i}" for i in range(40)
    ]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    data = ["--train", str(tmp_path / "train.tsv"), "--dev", str(tmp_path / "train.tsv")]
    args = ["finetune", "classify", "--model", str(run / "model"), *data, "--out", str(tmp_path / "cls")]
    assert main([*args, "task.max_len=32", "max_steps=2", "eval_every=2", "progress=false", "threads=1"]) == 0
    model, tokenizer = load_model(tmp_path / "cls" / "model")
    assert tokenizer.cls_id == 2 and tokenizer.mask_id == 4 and model.config.labels == ["0", "1"]
