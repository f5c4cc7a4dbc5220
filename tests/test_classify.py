"""Text classification through the one loop: labelled files are read (a bad line named file:line:field),
a tiny BERT (from a pretrained folder) and a tiny GPT (from scratch) learn a keyword task to >= 0.9 dev
accuracy, resume is exact, the best model is the one exported, and ``eval classify`` / ``predict``
report what the model computes one text at a time."""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from conftest import tiny_bert_folder
from lmforge.checkpoint import latest_checkpoint, load_checkpoint
from lmforge.cli import main
from lmforge.config import ConfigError, load_config
from lmforge.errors import LmforgeError
from lmforge.evaluate.classify import check_labels, label_set, read_examples
from lmforge.evaluate.metrics import accuracy, class_counts, confusion_matrix, macro_f1
from lmforge.models.bert import Bert, BertConfig
from lmforge.models.gpt import GPTConfig
from lmforge.models.io import load_model, read_safetensors, save_model
from lmforge.models.lora import load_adapters
from lmforge.models.losses import cross_entropy
from lmforge.models.task import TaskConfig, TaskModel, encode, pad
from lmforge.tokenizer.core import Tokenizer
from lmforge.train.config import TrainConfig
from lmforge.train.progress import Progress
from lmforge.train.trainer import Trainer

WORDS = ["the", "a", "movie", "film", "plot", "actor", "scene", "story", "music", "was", "is", "very"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<eos>"]
ROLES = ["pad", "unk", "cls", "sep", "mask", "eos"]
COMMON = [
    "objective=classify",
    "model.arch=task",
    "model.dropout=0.0",
    "task.max_len=16",
    "batch_size=16",
    "optim.lr=3e-3",
    "optim.warmup_steps=5",
    "optim.decay_steps=60",  # the schedule does not depend on max_steps, so a run can be extended
    "eval_every=10",
    "log_every=10",
    "vocab_multiple=1",
    "progress=false",
    "threads=1",
]
GPT_BACKBONE = [
    "model.backbone.arch=gpt",
    "model.backbone.n_layer=1",
    "model.backbone.n_head=2",
    "model.backbone.d_model=32",
    "model.backbone.max_seq_len=32",
]


def word_tokenizer() -> Tokenizer:
    """Whole words, with BERT's special tokens and an eos."""
    vocab = {w: i for i, w in enumerate([*SPECIAL, *WORDS, "great"])}
    backend = HFTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return Tokenizer(backend, {f"{role}_token": tok for role, tok in zip(ROLES, SPECIAL)})


def keyword_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """(label, text): "pos" exactly when the text holds the word "great"."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
        positive = rng.random() < 0.5
        if positive:
            words.insert(rng.randrange(len(words) + 1), "great")
        rows.append(("pos" if positive else "neg", " ".join(words)))
    return rows


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("label\ttext\n" + "".join(f"{label}\t{text}\n" for label, text in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """train.tsv, dev.tsv, a tokenizer folder and a tiny random BERT folder (with its MLM head)."""
    d = tmp_path_factory.mktemp("classify")
    write_tsv(d / "train.tsv", keyword_rows(512, 1))
    write_tsv(d / "dev.tsv", keyword_rows(128, 2))
    tok = word_tokenizer()
    tok.save(d / "tok")
    tiny_bert_folder(tok, d / "bert")
    return d


def config(data: Path, out: Path, *extra: str) -> TrainConfig:
    files = [f"task.train={data / 'train.tsv'}", f"task.dev={data / 'dev.tsv'}", f"out_dir={out}"]
    return load_config(TrainConfig, None, [*COMMON, *files, *extra])


BERT = ("task.model={bert}",)
GPT = ("task.tokenizer={tok}", *GPT_BACKBONE)


def backbone_args(data: Path, kind: tuple[str, ...]) -> list[str]:
    return [a.format(bert=data / "bert", tok=data / "tok") for a in kind]


@pytest.fixture(scope="module")
def bert_run(data) -> dict:
    out = data / "run-bert"
    summary = Trainer(config(data, out, *backbone_args(data, BERT), "max_steps=60", "ckpt_every=30")).run()
    return {**summary, "run": out}


# --- reading labelled files ---------------------------------------------------------------------------


def test_tsv_csv_jsonl_and_gzip_read_the_same_examples(tmp_path):
    rows = [("1", 'a "quoted" word , here'), ("0", "plain text"), ("10", "x")]
    write_tsv(tmp_path / "a.tsv", rows)
    (tmp_path / "a.csv").write_text(
        "label,text\n" + "".join(f'{label},"{text.replace(chr(34), 2 * chr(34))}"\n' for label, text in rows)
    )
    jsonl = "".join(json.dumps({"text": t, "label": int(label)}) + "\n" for label, t in rows)
    (tmp_path / "a.jsonl").write_text(jsonl)
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write(jsonl)
    for name in ("a.tsv", "a.csv", "a.jsonl", "b.jsonl.gz"):
        examples = read_examples(tmp_path / name)
        assert [(e.label, e.text) for e in examples] == rows, name
    assert read_examples(tmp_path / "a.tsv")[1].where == f"{tmp_path / 'a.tsv'}:3"
    assert label_set(read_examples(tmp_path / "a.tsv")) == ["0", "1", "10"]  # numbers in numeric order
    sst2_dev = tmp_path / "dev.tsv"  # SST-2's dev file calls its text column "content"
    sst2_dev.write_text("label\tcontent\n1\tgood\n")
    assert read_examples(sst2_dev)[0].text == "good"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("t.tsv", "label\ttext\n1\tok\n0\ttoo\tmany\n", "t.tsv:3: 3 fields, the header has 2"),
        ("t.tsv", "label\tbody\n1\tok\n", "t.tsv:2: no text field (looked for text, sentence, content"),
        ("t.csv", "text,label\nok,1\nfine,\n", "t.csv:3: field 'label': expected a label"),
        ("t.jsonl", '{"text": "ok", "label": 1}\n{"text": "ok"}\n', "t.jsonl:2: field 'label'"),
        ("t.jsonl", '{"text": 3, "label": 1}\n', "t.jsonl:1: field 'text': expected a string"),
        ("t.jsonl", '{"text": "a", "label": 1}\n\n{"text": "b", label: 1}\n', "t.jsonl:3: not JSON"),
        ("t.txt", "whatever\n", "expected a .tsv, .csv or .jsonl file"),
    ],
)
def test_a_bad_line_is_named_with_file_line_and_field(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(LmforgeError) as e:
        read_examples(tmp_path / name)
    assert message in str(e.value)


def test_labels_outside_the_label_set_are_named(tmp_path):
    examples = read_examples(write_tsv(tmp_path / "d.tsv", [("pos", "a"), ("maybe", "b")]))
    with pytest.raises(LmforgeError, match=r"d.tsv:3: field 'label': 'maybe' is not one of the labels"):
        check_labels(examples, ["neg", "pos"])


# --- the task model -----------------------------------------------------------------------------------


def test_decoder_pooling_reads_the_last_non_padding_token():
    torch.manual_seed(0)
    backbone = GPTConfig(vocab_size=50, max_seq_len=32, n_layer=2, n_head=2, d_model=32)
    model = TaskModel(TaskConfig(backbone=backbone, labels=["a", "b", "c"], dropout=0.0)).eval()
    rows = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14]]
    with torch.no_grad():
        alone = torch.cat([model(torch.tensor([r]), torch.ones(1, len(r), dtype=torch.bool)) for r in rows])
        ids, valid = pad(rows, pad_id=0)  # padded to the longest row
        assert torch.allclose(model(ids, valid), alone, atol=1e-5)
        wide = torch.cat([ids, torch.full((3, 7), 49)], dim=1)  # 7 more padding tokens, of another id
        assert torch.allclose(
            model(wide, torch.cat([valid, torch.zeros(3, 7, dtype=torch.bool)], 1)), alone, atol=1e-5
        )
    assert model.backbone.lm_head is None  # the LM head is dropped: no unused parameters
    with pytest.raises(ConfigError, match="pooling=cls needs an encoder"):
        TaskConfig(backbone=backbone, labels=["a", "b"], pooling="cls")


def test_mean_pooling_averages_the_non_padding_hidden_states():
    """pooling=mean: logits = W · mean_{t valid} h_t + b, whatever the padding."""
    torch.manual_seed(0)
    backbone = BertConfig(vocab_size=50, max_seq_len=32, n_layer=1, n_head=2, d_model=32, mlm_head=False)
    model = TaskModel(TaskConfig(backbone=backbone, labels=["a", "b"], pooling="mean", dropout=0.0)).eval()
    ids, valid = pad([[2, 5, 6, 3], [2, 7, 3]], pad_id=0)
    with torch.no_grad():
        hidden = model.backbone(ids, valid, head=False)
        means = torch.stack([hidden[0, :4].mean(0), hidden[1, :3].mean(0)])
        assert torch.allclose(model(ids, valid), model.head.proj(means), atol=1e-6)


def test_encoders_read_cls_text_sep_and_decoders_text_eos():
    tok = word_tokenizer()
    encoder, decoder = TaskConfig(labels=["a", "b"]), TaskConfig(backbone=GPTConfig(), labels=["a", "b"])
    ids = tok.encode("the movie was great")
    assert encode(encoder, tok, ["the movie was great"], 16) == [[tok.cls_id, *ids, tok.sep_id]]
    assert encode(decoder, tok, ["the movie was great"], 16) == [[*ids, tok.eos_id]]
    assert encode(encoder, tok, ["the movie was great"], 4) == [[tok.cls_id, *ids[:2], tok.sep_id]]


def test_progress_follows_the_monitored_metric_either_way():
    p = Progress()
    assert p.record_val(0.5, "max") and not p.record_val(0.4, "max") and p.evals_since_best == 1
    p.step = 7
    assert p.record_val(0.6, "max") and (p.best_val, p.best_step, p.evals_since_best) == (0.6, 7, 0)
    q = Progress()
    assert q.record_val(2.0) and q.record_val(1.0) and not q.record_val(1.5)


# --- fine-tuning through the loop -----------------------------------------------------------------------


def test_bert_from_a_pretrained_folder_learns_and_keeps_its_best_model(data, bert_run):
    assert bert_run["val_acc"] >= 0.9 and bert_run["stopped"] == "max_steps"
    model, tokenizer = load_model(bert_run["model_dir"])
    assert isinstance(model, TaskModel) and model.config.labels == ["neg", "pos"]
    assert not model.config.backbone.mlm_head and tokenizer is not None  # the MLM head was dropped
    meta = json.loads((Path(bert_run["model_dir"]) / "config.json").read_text())
    records = [json.loads(line) for line in (bert_run["run"] / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_acc" in r]
    best = next(r for r in evals if r["val_acc"] == max(e["val_acc"] for e in evals))  # the first best
    assert meta["training"]["step"] == best["step"] and meta["dev"]["val_acc"] == best["val_acc"] >= 0.9
    assert meta["task"]["max_len"] == 16


def test_bert_backbone_starts_from_the_pretrained_weights(data):
    trainer = Trainer(config(data, data / "unused", *backbone_args(data, BERT), "max_steps=1"))
    pretrained = read_safetensors(data / "bert" / "model.safetensors")
    backbone = trainer.model.backbone.state_dict()
    assert all(torch.equal(backbone[k], v) for k, v in pretrained.items() if not k.startswith("mlm."))


def test_gpt_from_scratch_learns(data):
    out = data / "run-gpt"
    summary = Trainer(config(data, out, *backbone_args(data, GPT), "max_steps=60")).run()
    assert summary["val_acc"] >= 0.9
    model, _ = load_model(summary["model_dir"])
    assert isinstance(model, TaskModel) and model.config.pool == "last"


def test_resume_is_exact(data, bert_run):
    out = data / "run-resumed"
    args = [*backbone_args(data, BERT), "ckpt_every=30"]
    Trainer(config(data, out, *args, "max_steps=30")).run()
    resumed = Trainer(config(data, out, *args, "max_steps=60"), resume=True)
    assert resumed.step == 30 and resumed.run()["loss"] == bert_run["loss"]
    a, b = (load_checkpoint(latest_checkpoint(r))["model"] for r in (bert_run["run"], out))
    assert all(torch.equal(a[k], b[k]) for k in a)
    a, b = (read_safetensors(r / "model" / "model.safetensors") for r in (bert_run["run"], out))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same best model


def test_class_weights_make_every_label_weigh_alike(data, tmp_path):
    train = write_tsv(tmp_path / "skewed.tsv", [("neg", "a b")] * 48 + [("pos", "great b")] * 16)
    cfg = config(
        data, tmp_path / "run", *backbone_args(data, BERT), f"task.train={train}", "task.class_weights=true"
    )
    trainer = Trainer(cfg)
    objective, model = trainer.objective, trainer.model.eval()  # eval: no dropout between the two passes
    assert objective.weights.tolist() == pytest.approx([64 / (2 * 48), 64 / (2 * 16)])
    batch = objective.train_batch(0)
    logits = model(batch["input_ids"], batch["key_valid"])
    w = objective.weights[batch["label"]]
    expected = (w * cross_entropy(logits, batch["label"], reduction="none")).mean()
    assert objective.loss(model, batch).item() == pytest.approx(expected.item())


# --- LoRA, frozen layers, layer-wise lr decay ----------------------------------------------------------


def test_lora_trains_adapters_and_head_only_saves_them_alone_and_exports_a_merged_model(data):
    out = data / "run-lora"
    cfg = config(
        data, out, *backbone_args(data, BERT), "max_steps=60", "lora.rank=4", "lora.alpha=8", "optim.lr=1e-2"
    )
    trainer = Trainer(cfg)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora." in n or n.startswith("head.") for n in trainable)
    summary = trainer.run()
    assert summary["val_acc"] >= 0.9
    # the frozen base is the pretrained folder's, untouched
    pretrained = read_safetensors(data / "bert" / "model.safetensors")
    trained = load_checkpoint(latest_checkpoint(out))["model"]
    base = {k.replace(".base.", ".").removeprefix("backbone."): v for k, v in trained.items()}
    assert all(torch.equal(base[k], v) for k, v in pretrained.items() if k in base)
    # the adapters alone: LoRA pairs and the head, loadable onto a fresh base
    adapters = read_safetensors(out / "adapters.safetensors")
    assert {k.split(".lora.")[0] if ".lora." in k else k for k in adapters} >= {"head.proj.weight"}
    assert all(".lora." in k or k.endswith(".scaling") or k.startswith("head.") for k in adapters)
    exported, _ = load_model(summary["model_dir"])
    assert not any(".lora." in k or ".base." in k for k in exported.state_dict())  # an ordinary model
    fresh = Trainer(config(data, data / "unused-lora", *backbone_args(data, BERT), "max_steps=1"))
    rebuilt = load_adapters(fresh.model, adapters).eval()
    batch = next(iter(trainer.objective.val_batches()))
    with torch.no_grad():
        merged = exported.eval()(batch["input_ids"], batch["key_valid"])
        assert torch.allclose(rebuilt(batch["input_ids"], batch["key_valid"]), merged, atol=1e-5)
    assert merged.argmax(-1).eq(batch["label"]).float().mean() >= 0.9


def test_frozen_layers_stay_as_loaded_and_layer_lr_decay_scales_each_depth(data, tmp_path):
    two = BertConfig(vocab_size=word_tokenizer().vocab_size, max_seq_len=32, n_layer=2, n_head=2, d_model=32)
    torch.manual_seed(0)
    save_model(Bert(two), word_tokenizer(), tmp_path / "bert2")
    args = [f"task.model={tmp_path / 'bert2'}", "max_steps=3", "optim.freeze_layers=1"]
    trainer = Trainer(config(data, tmp_path / "run", *args, "optim.layer_lr_decay=0.5"))
    frozen = {n for n, p in trainer.model.named_parameters() if not p.requires_grad}
    assert frozen == {
        n for n, _ in trainer.model.named_parameters() if "_emb" in n or "emb_norm" in n or ".blocks.0." in n
    }
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    scales = {
        n: g["lr_scale"]
        for g in trainer.optimizer.param_groups
        for p in g["params"]
        for n, q in trainer.model.named_parameters()
        if p is q
    }
    assert scales["head.proj.weight"] == 1.0 and "backbone.emb_norm.weight" in frozen
    assert scales["backbone.blocks.1.attn.qkv.weight"] == 0.5  # L = 2 blocks: block 1 at lr·0.5^1
    assert not any(n in scales for n in frozen)
    trainer.run()
    for n, p in trainer.model.named_parameters():
        assert torch.equal(p, before[n]) == (n in frozen), n
    lrs = {g["lr_scale"]: g["lr"] for g in trainer.optimizer.param_groups if g["params"]}
    assert lrs[0.5] == pytest.approx(0.5 * lrs[1.0])


# --- the commands ---------------------------------------------------------------------------------------


def test_finetune_command_sets_the_task_keys_and_fine_tuning_defaults(data, tmp_path, capsys):
    out = tmp_path / "cli-run"
    argv = ["finetune", "classify", "--model", str(data / "bert"), "--train", str(data / "train.tsv")]
    argv += ["--dev", str(data / "dev.tsv"), "--out", str(out), "max_steps=2", "batch_size=8", "threads=1"]
    assert main([*argv, "progress=false", "task.max_len=16"]) == 0
    saved = load_config(TrainConfig, out / "config.yaml")
    assert (saved.objective, saved.model.arch, saved.task.model, saved.out_dir) == (
        "classify",
        "task",
        str(data / "bert"),
        str(out),
    )
    assert (saved.optim.lr, saved.batch_size, saved.optim.weight_decay) == (5e-5, 8, 0.01)
    assert re.search(r"dev loss [\d.]+, acc [\d.]+, macro_f1", capsys.readouterr().out)


def test_eval_classify_reports_what_the_model_computes_text_by_text(data, bert_run, tmp_path, capsys):
    assert (
        main(
            [
                "eval",
                "classify",
                str(bert_run["run"]),
                "--data",
                str(data / "dev.tsv"),
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "eval-classify-dev.json").read_text())
    assert (tmp_path / "eval-classify-dev.png").stat().st_size > 0
    model, tok = load_model(bert_run["model_dir"])
    examples = read_examples(data / "dev.tsv")
    pred = []
    with torch.no_grad():
        for e in examples:
            ids = torch.tensor(encode(model.config, tok, [e.text], 16))
            pred.append(model.config.labels[int(model(ids, torch.ones_like(ids, dtype=torch.bool)).argmax())])
    gold, labels = [e.label for e in examples], model.config.labels
    matrix = confusion_matrix(gold, pred, labels)
    meta = json.loads((Path(bert_run["model_dir"]) / "config.json").read_text())
    assert report["accuracy"] == accuracy(gold, pred) == meta["dev"]["val_acc"]  # as validation measured it
    assert report["macro_f1"] == macro_f1(class_counts(matrix, labels))
    assert report["confusion_matrix"] == matrix and report["examples"] == len(examples)
    assert f"accuracy {report['accuracy']:.4f}" in capsys.readouterr().out


def test_predict_prints_a_label_and_its_probability(bert_run, capsys):
    texts = ["the movie was great", "the plot was very"]
    assert main(["predict", str(bert_run["run"]), "--text", texts[0], "--text", texts[1], "top_k=2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for line, text, labels in zip(lines, texts, [("pos", "neg"), ("neg", "pos")]):
        first, p, second, q, shown = line.split("\t")
        assert (first, second, shown) == (*labels, text)
        assert float(p) > 0.5 > float(q) and float(p) + float(q) == pytest.approx(1, abs=2e-4)
