"""Translation and summarization through the one loop: a tiny encoder-decoder learns a word-for-word
toy language to dev BLEU >= 90, `eval translate` and `generate` decode it, a joint BPE is trained when no
tokenizer is given, batches are teacher-forced and length-bucketed, and summarize reports ROUGE."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers
from transformers import MarianMTModel

from lmforge.cli import main
from lmforge.infer.sampling import GenerationConfig
from lmforge.infer.seq2seq import encode_sources, generate_ids
from lmforge.models.io import load_model
from lmforge.models.losses import IGNORE_INDEX, cross_entropy
from lmforge.models.task import pad
from lmforge.tasks.seq2seq import PairRows
from lmforge.tokenizer.core import Tokenizer

DE = "null eins zwei drei vier fünf sechs sieben acht neun hund katze haus baum".split()  # noqa: SIM905
EN = "zero one two three four five six seven eight nine dog cat house tree".split()  # noqa: SIM905
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
TINY = [
    *("model.n_enc_layer=2", "model.n_dec_layer=2", "model.d_model=64", "model.n_head=4", "model.d_ff=128"),
    *("model.max_seq_len=24", "task.max_len=24", "task.max_target_len=24", "model.dropout=0.0"),
    *(
        "batch_size=32",
        "optim.lr=3e-3",
        "optim.warmup_steps=20",
        "progress=false",
        "log_every=50",
        "threads=1",
    ),
]


def toy_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """Random 2-6 word sentences and their word-for-word translations."""
    r = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [r.randrange(len(DE)) for _ in range(r.randint(2, 6))]
        rows.append((" ".join(DE[w] for w in words), " ".join(EN[w] for w in words)))
    return rows


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> str:
    path.write_text("".join(f"{a}\t{b}\n" for a, b in rows), encoding="utf-8")
    return str(path)


def word_tokenizer(folder: Path) -> str:
    """One token per word of both languages (so the tiny model learns in a few hundred steps)."""
    vocab = {w: i for i, w in enumerate([*SPECIALS, *DE, *EN])}
    backend = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    roles = dict(zip(("pad_token", "bos_token", "eos_token", "unk_token"), SPECIALS))
    Tokenizer(backend, roles).save(folder)
    return str(folder)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("mt")
    train = write_tsv(tmp / "train.tsv", toy_pairs(2000, 1))
    dev = write_tsv(tmp / "dev.tsv", toy_pairs(64, 2))
    args = ["finetune", "translate", "--train", train, "--dev", dev, "--src", "de", "--tgt", "en"]
    args += ["--out", str(tmp / "run"), f"task.tokenizer={word_tokenizer(tmp / 'tok')}", *TINY]
    assert main([*args, "max_steps=700", "eval_every=350"]) == 0
    return tmp / "run", dev


def test_a_tiny_model_learns_the_toy_language(trained):
    run, _ = trained
    meta = json.loads((run / "model" / "config.json").read_text())
    assert meta["architecture"] == "seq2seq" and meta["task"]["src"] == "de"
    assert meta["dev"]["val_bleu"] >= 90, meta["dev"]
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert next(r["val_bleu"] for r in logged if "val_bleu" in r) < meta["dev"]["val_bleu"]


def test_eval_translate_scores_beam_outputs(trained, capsys):
    run, dev = trained
    assert main(["eval", "translate", str(run), "--data", dev, "--beams", "3"]) == 0
    out = capsys.readouterr().out
    assert "BLEU" in out and "tok:13a" in out
    report = json.loads((run / "eval-translate-dev.json").read_text())
    assert report["bleu"] >= 90 and report["num_beams"] == 3 and report["pairs"] == 64
    outputs = (run / "eval-translate-dev.txt").read_text().splitlines()
    references = [line.split("\t")[1] for line in Path(dev).read_text().splitlines()]
    assert sum(o == r for o, r in zip(outputs, references)) >= 48


def test_generate_translates_with_beams(trained, capsys):
    run, _ = trained
    args = ["--prompt", "eins zwei hund", "--beams", "2", "--max-new-tokens", "20"]
    assert main(["generate", str(run / "model"), *args]) == 0
    assert capsys.readouterr().out.strip().endswith("one two dog")


@pytest.fixture(scope="module")
def as_marian(trained, tmp_path_factory):
    """The trained toy model exported as a transformers MarianMTModel (post-norm, sinusoidal: Marian's
    layout), and its lmforge twin."""
    run, _ = trained
    out = tmp_path_factory.mktemp("hf") / "marian"
    assert main(["convert", "--to-hf", str(run / "model"), str(out)]) == 0
    return MarianMTModel.from_pretrained(out).eval(), *load_model(run / "model")


@pytest.mark.parametrize(
    "settings",
    [
        dict(num_beams=1),
        dict(num_beams=2, length_penalty=1.0, early_stopping=False),
        dict(num_beams=4, length_penalty=0.6, early_stopping=True),
        dict(num_beams=4, length_penalty=2.0, early_stopping="never"),
        dict(num_beams=3, no_repeat_ngram_size=2, min_new_tokens=3),
    ],
)
def test_decoding_equals_transformers_for_an_encoder_decoder(trained, as_marian, settings):
    """Greedy and beam search on the trained model = transformers' generate on its Marian export, token
    for token; max_new_tokens 5 cuts some outputs, eos ends the others."""
    hf, model, tok = as_marian
    texts = [line.split("\t")[0] for line in Path(trained[1]).read_text().splitlines()[:12]]
    sources = encode_sources(tok, texts, 24)
    cfg = GenerationConfig(max_new_tokens=5, temperature=0.0, **settings)
    ours = generate_ids(model, sources, cfg, tok.eos_id)
    ids, valid = pad(sources, tok.pad_id)
    with torch.no_grad():
        out = hf.generate(
            input_ids=ids, attention_mask=valid.long(), max_new_tokens=5, do_sample=False,
            eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, forced_eos_token_id=None, **settings,
        )  # fmt: skip
    theirs = [row[: row.index(tok.eos_id)] if tok.eos_id in row else row for row in out[:, 1:].tolist()]
    theirs = [[t for t in row if t != tok.pad_id] for row in theirs]
    assert ours == theirs
    assert {len(t) < 5 for t in theirs} == {True, False}  # eos ended some, the limit cut others


def test_a_joint_bpe_is_trained_on_both_sides(tmp_path):
    train = write_tsv(tmp_path / "train.tsv", toy_pairs(300, 3))
    args = [
        "finetune",
        "translate",
        "--train",
        train,
        "--src",
        "de",
        "--tgt",
        "en",
        "--out",
        str(tmp_path / "r"),
    ]
    assert main([*args, *TINY, "task.vocab_size=400", "max_steps=2", "eval_batches=0"]) == 0
    tok = Tokenizer.load(tmp_path / "r" / "tokenizer")
    assert tok.vocab_size <= 400 and Tokenizer.load(tmp_path / "r" / "model").vocab_size == tok.vocab_size
    assert len(tok.encode("katze")) == 1 and len(tok.encode("seven")) == 1  # both languages merged


def test_pairs_are_teacher_forced_and_padding_is_ignored():
    rows = PairRows([[5, 6, 2], [7, 2]], [[8, 9, 10, 2], [11, 2]], pad_id=0, start_id=1)
    batch = rows.collate(np.array([0, 1]))
    assert batch["tgt_in"].tolist() == [[1, 8, 9, 10], [1, 11, 0, 0]]
    assert batch["labels"].tolist() == [[8, 9, 10, 2], [11, 2, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["src_valid"].tolist() == [[True, True, True], [True, True, False]]


def test_label_smoothing_is_the_mixture_with_the_uniform_distribution():
    """(1 - ε)·CE + ε·mean_c(-log p_c): the target is (1 - ε) on the label plus ε/C everywhere."""
    logits, y = torch.randn(5, 7), torch.randint(0, 7, (5,))
    log_p = logits.log_softmax(-1)
    expected = 0.9 * -log_p[range(5), y].mean() + 0.1 * -log_p.mean()
    torch.testing.assert_close(cross_entropy(logits, y, label_smoothing=0.1), expected)


def test_summarize_reports_rouge(tmp_path):
    def rows(n, seed):
        r = random.Random(seed)
        out = []
        for _ in range(n):
            words = [r.choice(EN) for _ in range(8)]
            out.append(json.dumps({"dialogue": " ".join(words), "summary": " ".join(words[:2])}))
        return "\n".join(out) + "\n"

    (tmp_path / "train.jsonl").write_text(rows(200, 1))
    (tmp_path / "dev.jsonl").write_text(rows(16, 2))
    args = [
        "finetune",
        "summarize",
        "--train",
        str(tmp_path / "train.jsonl"),
        "--dev",
        str(tmp_path / "dev.jsonl"),
    ]
    args += ["--out", str(tmp_path / "r"), f"task.tokenizer={word_tokenizer(tmp_path / 'tok')}", *TINY]
    assert main([*args, "max_steps=80", "eval_every=80"]) == 0
    logged = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in logged if "val_loss" in r][-1]
    assert {"val_rougeL", "val_rouge1", "val_rouge2"} <= val.keys()
    # the dev ROUGE the loop logs is what `eval summarize` computes from the exported model's greedy outputs
    dev = str(tmp_path / "dev.jsonl")
    assert main(["eval", "summarize", str(tmp_path / "r"), "--data", dev, "--beams", "1"]) == 0
    report = json.loads((tmp_path / "r" / "eval-summarize-dev.json").read_text())
    for k in ("rougeL", "rouge1", "rouge2"):
        assert report[k] == pytest.approx(val[f"val_{k}"], abs=1e-6)
    assert report["rougeL"] > 0
