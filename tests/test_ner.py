"""Named-entity recognition through the one loop: CoNLL files are read (a bad line named file:line:field),
word tags sit on each word's first sub-token, entity scores equal seqeval's on real WNUT-17 data, a tiny
BERT learns a synthetic tagging task to >= 0.9 dev entity F1, and ``eval ner`` reports what the model
computes one sentence at a time."""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path

import pytest
import torch
from seqeval.metrics import accuracy_score, classification_report, f1_score
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from conftest import tiny_bert_folder
from lmforge.cli import main
from lmforge.config import ConfigError, load_config
from lmforge.errors import LmforgeError
from lmforge.evaluate.ner import (
    check_tags,
    encode_sentences,
    ner_report,
    read_conll,
    tag_set,
    word_tags,
)
from lmforge.models.gpt import GPTConfig
from lmforge.models.io import load_model
from lmforge.models.losses import IGNORE_INDEX, cross_entropy
from lmforge.models.task import TaskConfig
from lmforge.tasks.ner import TagRows
from lmforge.tokenizer.core import Tokenizer
from lmforge.train.config import TrainConfig
from lmforge.train.trainer import Trainer

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<eos>"]
ROLES = ["pad", "unk", "cls", "sep", "mask", "eos"]
FILLER = ["the", "a", "went", "to", "saw", "with", "and", "today", "in", "met", "visited", "from"]
PIECES = ["anna", "bob", "alex", "##ander", "max", "##imil", "##ian", "san", "paulo", "diego", "paris"]
PIECES += ["rotter", "##dam"]
PERSONS = ["anna", "bob", "alex", "alexander", "maximilian"]  # alexander: alex ##ander, one word
PLACES = [["san", "paulo"], ["san", "diego"], ["paris"], ["rotterdam"]]
LABELS = ["O", "B-LOC", "B-PER", "I-LOC"]
COMMON = [
    "objective=ner",
    "model.arch=task",
    "model.dropout=0.0",
    "task.max_len=24",
    "batch_size=16",
    "optim.lr=3e-3",
    "optim.warmup_steps=5",
    "optim.decay_steps=60",
    "eval_every=20",
    "log_every=20",
    "progress=false",
    "threads=1",
]


def wordpiece_tokenizer() -> Tokenizer:
    """Whole words and ## continuations, so some words are several sub-tokens."""
    vocab = {w: i for i, w in enumerate([*SPECIAL, *FILLER, *PIECES])}
    backend = HFTokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return Tokenizer(backend, {f"{role}_token": tok for role, tok in zip(ROLES, SPECIAL)})


def tagged_sentences(n: int, seed: int) -> list[list[tuple[str, str]]]:
    """Filler words with one or two persons (B-PER) and places (B-LOC, I-LOC) put in."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        pairs = [[(rng.choice(FILLER), "O")] for _ in range(rng.randint(3, 8))]
        for _ in range(rng.randint(1, 2)):
            if rng.random() < 0.5:
                entity = [(rng.choice(PERSONS), "B-PER")]
            else:
                words = rng.choice(PLACES)
                entity = [(w, "B-LOC" if i == 0 else "I-LOC") for i, w in enumerate(words)]
            pairs.insert(rng.randrange(len(pairs) + 1), entity)
        sentences.append([p for group in pairs for p in group])
    return sentences


def write_conll(path: Path, sentences: list[list[tuple[str, str]]]) -> Path:
    path.write_text("\n".join("".join(f"{w}\t{t}\n" for w, t in s) for s in sentences), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """train.conll, dev.conll and a tiny random BERT folder (with its MLM head) that has the tokenizer."""
    d = tmp_path_factory.mktemp("ner")
    write_conll(d / "train.conll", tagged_sentences(400, 1))
    write_conll(d / "dev.conll", tagged_sentences(100, 2))
    tok = wordpiece_tokenizer()
    tiny_bert_folder(tok, d / "bert")
    return d


def config(data: Path, out: Path, *extra: str) -> TrainConfig:
    files = [f"task.train={data / 'train.conll'}", f"task.dev={data / 'dev.conll'}", f"out_dir={out}"]
    return load_config(TrainConfig, None, [*COMMON, f"task.model={data / 'bert'}", *files, *extra])


@pytest.fixture(scope="module")
def bert_run(data) -> dict:
    out = data / "run-bert"
    summary = Trainer(config(data, out, "max_steps=60")).run()
    return {**summary, "run": out}


# --- reading CoNLL files --------------------------------------------------------------------------------

CONLL = (
    "-DOCSTART- -X- -X- O\n"
    "\n"
    "EU NNP B-NP B-ORG\n"
    "rejects VBZ B-VP O\n"
    "German JJ B-NP B-MISC\n"
    "\t\n"  # WNUT-17's train file ends sentences with a lone tab
    "Peter\tB-PER\n"
    "Blackburn\tI-PER\n"
    "\n"
    "\n"
    "-DOCSTART-\tO\n"
    "Bonn\tB-LOC"
)


def test_conll_columns_docstart_and_gzip_read_the_same_sentences(tmp_path):
    (tmp_path / "a.conll").write_text(CONLL)
    with gzip.open(tmp_path / "b.conll.gz", "wt") as f:
        f.write(CONLL)
    for name in ("a.conll", "b.conll.gz"):
        sentences = read_conll(tmp_path / name)
        assert [s.words for s in sentences] == [["EU", "rejects", "German"], ["Peter", "Blackburn"], ["Bonn"]]
        assert [s.tags for s in sentences] == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"], ["B-LOC"]]
        assert [s.where for s in sentences] == [f"{tmp_path / name}:{n}" for n in (3, 7, 12)]
    assert tag_set(read_conll(tmp_path / "a.conll")) == ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-PER"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a\tO\nb\n", "t.conll:2: field 'tag': missing"),
        ("a\tO\n\nb\tX-PER\n", "t.conll:3: field 'tag': 'X-PER' is not a BIO tag"),
        ("a NN B-\n", "t.conll:1: field 'tag': 'B-' is not a BIO tag"),
        ("-DOCSTART- -X- O\n\n", "t.conll: no sentences"),
    ],
)
def test_a_bad_line_is_named_with_file_line_and_field(tmp_path, content, message):
    (tmp_path / "t.conll").write_text(content)
    with pytest.raises(LmforgeError) as e:
        read_conll(tmp_path / "t.conll")
    assert message in str(e.value)


def test_tags_outside_the_label_set_are_named_by_line(tmp_path):
    sentences = read_conll(write_conll(tmp_path / "d.conll", [[("a", "O")], [("b", "O"), ("c", "B-X")]]))
    with pytest.raises(LmforgeError, match=r"d.conll:4: field 'tag': 'B-X' is not one of the labels"):
        check_tags(sentences, ["O", "B-PER"])
    with pytest.raises(ConfigError, match="include 'O'"):
        tag_set(sentences, ["B-X", "I-X"])


def test_wnut17_files_read(shared_data):
    d = shared_data / "ner" / "wnut17"
    names = ("wnut17train.conll", "emerging.dev.conll", "emerging.test.annotated")
    train, dev, test = (read_conll(d / name) for name in names)
    assert (len(train), len(dev), len(test)) == (3394, 1009, 1287)
    labels = tag_set(train)
    assert len(labels) == 13 and labels[0] == "O"
    check_tags(dev, labels)
    check_tags(test, labels)


# --- alignment ------------------------------------------------------------------------------------------


def test_only_the_first_sub_token_of_a_word_carries_its_tag():
    tok = wordpiece_tokenizer()
    encoder = TaskConfig(labels=LABELS)
    words = ["alexander", "went", "to", "rotterdam"]  # alex ##ander went to rotter ##dam
    ((ids, first),) = encode_sentences(encoder, tok, [words], 16)
    assert tok.backend.decode(ids, skip_special_tokens=False).split() == [
        "[CLS]", "alex", "##ander", "went", "to", "rotter", "##dam", "[SEP]"
    ]  # fmt: skip
    assert first == [1, 3, 4, 5]
    batch = TagRows([(ids, first)], [[2, 0, 0, 1]], 0).collate([0])
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 2, IGNORE_INDEX, 0, 0, 1, IGNORE_INDEX, IGNORE_INDEX]]
    # cut at max_len: the words past the window have no position (and no label)
    ((cut, cut_first),) = encode_sentences(encoder, tok, [words], 5)
    assert cut == [tok.cls_id, *ids[1:4], tok.sep_id] and cut_first == [1, 3, -1, -1]
    batch = TagRows([(cut, cut_first)], [[2, 0, 0, 1]], 0).collate([0])
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 2, IGNORE_INDEX, 0, IGNORE_INDEX]]
    decoder = TaskConfig(backbone=GPTConfig(), labels=LABELS)  # no [CLS]; eos last
    assert encode_sentences(decoder, tok, [words], 16) == [([*ids[1:-1], tok.eos_id], [0, 2, 3, 4])]


def test_a_word_takes_the_argmax_at_its_first_sub_token_and_unseen_words_are_O():
    first = torch.tensor([[1, 3, -1, -1], [1, 2, -1, -1]])  # row 0: 2 words in the window, 2 cut
    logits = torch.zeros(2, 5, len(LABELS))
    logits[0, 1, 2] = logits[0, 2, 1] = logits[0, 3, 3] = logits[1, 1, 1] = logits[1, 2, 2] = 1.0
    logits[:, 0, 2] = 9.0  # [CLS] and padding do not count
    assert word_tags(logits, first, [4, 2], LABELS) == [["B-PER", "I-LOC", "O", "O"], ["B-LOC", "B-PER"]]


# --- metrics -----------------------------------------------------------------------------------------------


def test_entity_scores_equal_seqeval_on_wnut17(shared_data):
    gold = [s.tags for s in read_conll(shared_data / "ner" / "wnut17" / "emerging.test.annotated")]
    labels = tag_set(read_conll(shared_data / "ner" / "wnut17" / "emerging.test.annotated"))
    rng = random.Random(0)  # corrupt a tenth of the tags: stray I- tags, wrong types, wrong spans
    pred = [[rng.choice(labels) if rng.random() < 0.1 else t for t in s] for s in gold]
    report = ner_report(gold, pred, labels)
    expected = classification_report(gold, pred, output_dict=True)
    micro = expected["micro avg"]
    assert report["f1"] == pytest.approx(f1_score(gold, pred), abs=1e-9)
    assert [report[k] for k in ("precision", "recall", "f1")] == pytest.approx(
        [micro["precision"], micro["recall"], micro["f1-score"]], abs=1e-9
    )
    assert report["token_accuracy"] == pytest.approx(accuracy_score(gold, pred), abs=1e-12)
    types = {k for k in expected if not k.endswith(" avg")}
    assert set(report["per_type"]) == types and len(types) == 6
    for kind in types:
        mine, theirs = report["per_type"][kind], expected[kind]
        assert [mine["precision"], mine["recall"], mine["f1"]] == pytest.approx(
            [theirs["precision"], theirs["recall"], theirs["f1-score"]], abs=1e-9
        )
        assert mine["support"] == theirs["support"]
    assert 0.2 < report["f1"] < 0.9  # the corruption hit, but not everything


# --- fine-tuning through the loop -----------------------------------------------------------------------


def test_bert_learns_the_tags_and_exports_its_best_model(data, bert_run):
    assert bert_run["val_f1"] >= 0.9 and bert_run["stopped"] == "max_steps"
    model, tokenizer = load_model(bert_run["model_dir"])
    assert model.config.head == "token" and model.config.labels == LABELS and tokenizer is not None
    meta = json.loads((Path(bert_run["model_dir"]) / "config.json").read_text())
    records = [json.loads(line) for line in (bert_run["run"] / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_f1" in r]
    best = next(r for r in evals if r["val_f1"] == max(e["val_f1"] for e in evals))  # the first best
    assert meta["training"]["step"] == best["step"] and meta["dev"]["val_f1"] == best["val_f1"] >= 0.9
    assert meta["task"] == {"objective": "ner", "monitor": "val_f1", "max_len": 24}


def test_the_loss_averages_over_first_sub_tokens_with_optional_class_weights(data, tmp_path):
    trainer = Trainer(config(data, tmp_path / "run", "task.class_weights=true"))
    objective, model = trainer.objective, trainer.model.eval()
    batch = objective.train_batch(0)
    labelled = batch["labels"] != IGNORE_INDEX
    assert objective.count(batch) == int(labelled.sum()) == int((batch["first"] >= 0).sum())
    logits = model(batch["input_ids"], batch["key_valid"])
    losses = cross_entropy(logits[labelled], batch["labels"][labelled], reduction="none")
    w = objective.weights[batch["labels"][labelled]]
    assert objective.loss(model, batch).item() == pytest.approx((w * losses).mean().item(), rel=1e-5)
    loss, _ = objective.eval_step(model, batch)  # validation's loss is unweighted
    assert loss.item() == pytest.approx(losses.mean().item(), rel=1e-5)


def test_finetune_ner_command_runs_the_objective(data, tmp_path, capsys):
    argv = ["finetune", "ner", "--model", str(data / "bert"), "--train", str(data / "train.conll")]
    argv += ["--dev", str(data / "dev.conll"), "--out", str(tmp_path / "run"), "max_steps=2", "eval_every=2"]
    assert main([*argv, "batch_size=8", "threads=1", "progress=false", "task.max_len=24"]) == 0
    assert re.search(r"dev loss [\d.]+, f1 [\d.]+, precision [\d.]+, recall [\d.]+", capsys.readouterr().out)


def test_eval_ner_reports_what_the_model_computes_sentence_by_sentence(data, bert_run, tmp_path, capsys):
    dev = data / "dev.conll"
    assert main(["eval", "ner", str(bert_run["run"]), "--data", str(dev), "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "eval-ner-dev.json").read_text())
    model, tok = load_model(bert_run["model_dir"])
    gold, pred = [], []
    with torch.no_grad():
        for s in read_conll(dev):  # each word tokenized on its own; the tag read at its first piece
            pieces = [tok.encode(w) for w in s.words]
            starts = [1 + sum(len(p) for p in pieces[:i]) for i in range(len(pieces))]
            ids = torch.tensor([[tok.cls_id, *(i for p in pieces for i in p), tok.sep_id]])
            best = model(ids, torch.ones_like(ids, dtype=torch.bool))[0].argmax(-1)
            gold.append(s.tags)
            pred.append([model.config.labels[int(best[i])] for i in starts])
    meta = json.loads((Path(bert_run["model_dir"]) / "config.json").read_text())
    assert report["f1"] == pytest.approx(f1_score(gold, pred), abs=1e-12)
    assert report["f1"] == meta["dev"]["val_f1"]  # as validation measured it
    assert report["sentences"] == len(gold) and report["unseen_words"] == 0
    assert f"entity F1 {report['f1']:.4f}" in capsys.readouterr().out
