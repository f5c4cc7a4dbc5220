"""Extractive question answering outside training: SQuAD v1.1 files, questions cut into model windows,
each question's best answer span, and the report ``lmforge eval qa`` writes (EM and F1 as the official
evaluate-v1.1.py computes them, and the {id: answer} predictions file that script reads).

Fine-tuning (``tasks/qa.py``) reads, windows and answers with these same functions, so its training
targets, its dev scores and ``eval qa`` cannot disagree about where a window starts or what a span says.

Windows (``make_windows``): an encoder reads ``[CLS] question [SEP] context-window [SEP]`` (token types 0
up to the first [SEP], 1 after), a decoder ``question sep context-window`` (sep: the tokenizer's [SEP],
else its eos). The question keeps its first ``question_budget(max_len)`` tokens; the context is cut into
windows of at most ``max_len`` tokens in all, consecutive windows sharing exactly ``stride`` context
tokens (Hugging Face's ``stride``/``doc_stride`` overlap, not the step between window starts), so every
context token is in some window. A window that holds the whole first gold answer targets its tokens;
any other targets position 0 ([CLS]; a decoder's first token), as BERT's SQuAD fine-tuning does.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lmforge.atomic import atomic_file
from lmforge.config import ConfigError
from lmforge.errors import LmforgeError
from lmforge.evaluate.classify import TaskEvalConfig, json_records, load_classifier, model_folder, open_text
from lmforge.evaluate.metrics import squad_scores, squad_sums
from lmforge.models.task import TaskModel, pad
from lmforge.tokenizer.core import Tokenizer

QUESTION_TOKENS = 64  # a question's tokens beyond this are cut (fewer when max_len is small)
SETTINGS = ("max_len", "stride", "max_answer_tokens")  # what a fine-tuned folder records for windowing


@dataclass
class QAEvalConfig(TaskEvalConfig):
    """Settings of ``lmforge eval qa``: data is SQuAD v1.1 JSON (or JSONL of HF's squad rows), plain or
    .gz; max_len is per window; None: the value the model was fine-tuned with."""

    stride: int | None = None  # context tokens shared by consecutive windows
    max_answer_tokens: int | None = None  # longest answer span considered

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.stride or 0) < 0 or (self.max_answer_tokens or 1) < 1:
            raise ConfigError("max_answer_tokens must be positive, stride >= 0")

    def settings(self, recorded: dict[str, int]) -> dict[str, int]:
        """max_len, stride and max_answer_tokens: these settings where given, else the recorded ones."""
        chosen = {k: getattr(self, k) if getattr(self, k) is not None else recorded.get(k) for k in SETTINGS}
        missing = [k for k, v in chosen.items() if v is None]
        if missing:
            raise ConfigError(
                f"the model folder does not record {', '.join(missing)}: set them (--{missing[0]})"
            )
        return chosen


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    context: str
    answers: tuple[str, ...]  # gold answer texts (the first is the training target)
    starts: tuple[int, ...]  # character offset of each answer in the context
    where: str  # file and JSON path or line, for messages


# --- reading SQuAD files ----------------------------------------------------------------------------------


def _field(record: Any, key: str, kind: type, where: str, prefix: str = "") -> Any:
    """record[key], checked to be a ``kind``; else an error naming file, line or JSON path, and field."""
    value = record.get(key) if isinstance(record, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        name = {str: "a string", int: "an integer", list: "a list", dict: "an object"}[kind]
        raise LmforgeError(f"{where}: field {prefix + key!r}: expected {name}, got {value!r:.80}")
    return value


def _question(
    loc: str, where: str, qid: str, question: str, context: str, answers: list[tuple[str, int, str]]
) -> Question:
    """A Question whose every (text, start, field) answer is where its answer_start says (errors name
    ``loc``: the file, or file:line)."""
    if not answers:
        raise LmforgeError(
            f"{where}: question {qid} has no answer (SQuAD v2 unanswerable ones are not supported)"
        )
    for text, start, field in answers:
        if not text or start < 0 or context[start : start + len(text)] != text:
            raise LmforgeError(
                f"{loc}: field {field!r}: {start} does not point at the answer {text!r} in the context "
                f"(question {qid}; the context reads {context[start : start + len(text)]!r} there)"
            )
    return Question(qid, question, context, tuple(a[0] for a in answers), tuple(a[1] for a in answers), where)


def _squad_json(path: Path) -> list[Question]:
    """{"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers": [{"text",
    "answer_start"}]}]}]}]}, SQuAD v1.1's layout."""
    with open_text(path) as f:
        try:
            root = json.load(f)
        except json.JSONDecodeError as e:
            raise LmforgeError(f"{path}: not JSON ({e})") from None
    where, questions = str(path), []
    for i, article in enumerate(_field(root, "data", list, where)):
        for j, para in enumerate(_field(article, "paragraphs", list, where, f"data[{i}].")):
            at = f"data[{i}].paragraphs[{j}]."
            context = _field(para, "context", str, where, at)
            for k, qa in enumerate(_field(para, "qas", list, where, at)):
                q = f"{at}qas[{k}]."
                qid, question = _field(qa, "id", str, where, q), _field(qa, "question", str, where, q)
                answers = []
                for n, a in enumerate(_field(qa, "answers", list, where, q)):
                    a_at = f"{q}answers[{n}]."
                    text = _field(a, "text", str, where, a_at)
                    start = _field(a, "answer_start", int, where, a_at)
                    answers.append((text, start, a_at + "answer_start"))
                questions.append(_question(where, f"{where}: {q[:-1]}", qid, question, context, answers))
    return questions


def _squad_jsonl(path: Path) -> list[Question]:
    """One {"id", "question", "context", "answers": {"text": [...], "answer_start": [...]}} per line, the
    rows of Hugging Face's ``squad`` dataset."""
    questions = []
    for line, record in json_records(path):
        where = f"{path}:{line}"
        qid, question, context = (_field(record, k, str, where) for k in ("id", "question", "context"))
        gold = _field(record, "answers", dict, where)
        texts = _field(gold, "text", list, where, "answers.")
        starts = _field(gold, "answer_start", list, where, "answers.")
        if len(texts) != len(starts):
            raise LmforgeError(
                f"{where}: field 'answers': {len(texts)} texts but {len(starts)} answer_starts"
            )
        answers = []
        for n, (text, start) in enumerate(zip(texts, starts)):
            if not isinstance(text, str) or not isinstance(start, int) or isinstance(start, bool):
                raise LmforgeError(f"{where}: field 'answers' [{n}]: expected a string and an integer")
            answers.append((text, start, f"answers.answer_start[{n}]"))
        questions.append(_question(where, where, qid, question, context, answers))
    return questions


def read_squad(path: str | Path) -> list[Question]:
    """The questions of a SQuAD v1.1 .json file or a .jsonl of HF squad rows, plain or .gz; an answer_start
    that does not point at its answer text, a missing field or a repeated id is an error naming the file,
    the JSON path or line, and the field."""
    p = Path(path)
    if not p.is_file():
        raise LmforgeError(f"{p}: no such file")
    name = p.name.removesuffix(".gz")
    if name.endswith(".jsonl"):
        questions = _squad_jsonl(p)
    elif name.endswith(".json"):
        questions = _squad_json(p)
    else:
        raise LmforgeError(f"{p}: expected a SQuAD .json or a .jsonl file (optionally .gz)")
    if not questions:
        raise LmforgeError(f"{p}: no questions")
    seen: dict[str, str] = {}
    for q in questions:
        if q.id in seen:
            raise LmforgeError(f"{q.where}: field 'id': {q.id} repeats the question at {seen[q.id]}")
        seen[q.id] = q.where
    return questions


# --- windows ---------------------------------------------------------------------------------------------


@dataclass
class Windows:
    """Questions as model rows; row r holds context tokens ``lo[r]:lo[r] + size[r]`` of its question's
    context at row positions ``first[r]:first[r] + size[r]``."""

    questions: list[Question]
    ids: list[list[int]]  # each row's token ids
    question: np.ndarray  # (W,) the question of each row; a question's rows are consecutive
    first: np.ndarray  # (W,) row position of the window's first context token
    lo: np.ndarray  # (W,) index of that token among the context's tokens
    size: np.ndarray  # (W,) context tokens in the window
    start: np.ndarray  # (W,) target start position: the first gold answer's first token, or 0
    end: np.ndarray  # (W,) target end position (inclusive), or 0
    last: np.ndarray  # (W,) whether the row is its question's last window
    offsets: list[np.ndarray]  # per question: (context tokens, 2) character span of each token

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(r) for r in self.ids], dtype=np.int64)

    def chars(self, row: int, i: int, j: int) -> tuple[int, int]:
        """The context characters [start, end) of row positions i..j (context positions of ``row``)."""
        offsets = self.offsets[self.question[row]]
        shift = self.lo[row] - self.first[row]
        return int(offsets[i + shift, 0]), int(offsets[j + shift, 1])


def _specials(tokenizer: Tokenizer, encoder: bool) -> tuple[list[int], list[int], list[int]]:
    """The special tokens before the question, between question and context, and after the context."""
    if encoder:
        if tokenizer.cls_id is None or tokenizer.sep_id is None:
            raise LmforgeError("an encoder's tokenizer needs [CLS] and [SEP] tokens")
        return [tokenizer.cls_id], [tokenizer.sep_id], [tokenizer.sep_id]
    sep = tokenizer.sep_id if tokenizer.sep_id is not None else tokenizer.eos_id
    if sep is None:
        raise LmforgeError("a decoder reads 'question sep context': its tokenizer needs a [SEP] or eos token")
    return [], [sep], []


def question_budget(max_len: int, specials: int = 3) -> int:
    """Question tokens kept: QUESTION_TOKENS, or half of what a window holds besides its special tokens
    when that is less, so every window keeps at least as many context tokens as question tokens."""
    return min(QUESTION_TOKENS, (max_len - specials) // 2)


def answer_tokens(offsets: np.ndarray, start: int, end: int) -> tuple[int, int] | None:
    """The first and last context tokens overlapping characters [start, end); None if no token does."""
    inside = np.nonzero((offsets[:, 1] > start) & (offsets[:, 0] < end))[0]
    return (int(inside[0]), int(inside[-1])) if len(inside) else None


def make_windows(
    tokenizer: Tokenizer, questions: list[Question], max_len: int, stride: int, encoder: bool = True
) -> Windows:
    """Every question's windows with their targets (see the module docstring); each distinct context is
    tokenized once."""
    before, between, after = _specials(tokenizer, encoder)
    n_special = len(before) + len(between) + len(after)
    budget = question_budget(max_len, n_special)
    room = max_len - n_special - budget  # context tokens a window holds at least
    if budget < 1 or stride >= room:
        raise ConfigError(
            f"max_len={max_len} holds at least {room} context tokens per window (after {budget} question "
            f"tokens): stride={stride} must be smaller"
        )
    contexts = list(dict.fromkeys(q.context for q in questions))
    encoded = dict(zip(contexts, tokenizer.encode_offsets(contexts)))
    offsets_of = {c: np.array(offs, dtype=np.int64).reshape(-1, 2) for c, (_, offs) in encoded.items()}
    ids, rows = [], []  # rows: (question, first, lo, size, start, end, last) of each window
    for index, (q, q_ids) in enumerate(
        zip(questions, tokenizer.encode_batch([q.question for q in questions]))
    ):
        head = [*before, *q_ids[:budget], *between]
        c_ids, offsets = encoded[q.context][0], offsets_of[q.context]
        per_window = max_len - len(head) - len(after)
        gold = answer_tokens(offsets, q.starts[0], q.starts[0] + len(q.answers[0]))
        lo = 0
        while True:
            hi = min(lo + per_window, len(c_ids))
            inside = gold is not None and lo <= gold[0] and gold[1] < hi
            start, end = (len(head) + gold[0] - lo, len(head) + gold[1] - lo) if inside else (0, 0)
            ids.append([*head, *c_ids[lo:hi], *after])
            rows.append((index, len(head), lo, hi - lo, start, end, hi == len(c_ids)))
            if hi == len(c_ids):
                break
            lo = hi - stride
    question, first, lo, size, start, end, last = np.array(rows, dtype=np.int64).reshape(-1, 7).T
    offsets = [offsets_of[q.context] for q in questions]
    return Windows(questions, ids, question, first, lo, size, start, end, last.astype(bool), offsets)


def window_inputs(windows: Windows, index: np.ndarray, pad_id: int) -> dict[str, Tensor]:
    """input_ids, key_valid and token_type_ids (1 from the first context token on, 0 before and at
    padding; a decoder ignores them) of rows ``index``."""
    ids, valid = pad([windows.ids[i] for i in index], pad_id)
    first = torch.from_numpy(windows.first[index])
    types = (torch.arange(ids.size(1))[None, :] >= first[:, None]) & valid
    return {"input_ids": ids, "key_valid": valid, "token_type_ids": types.long()}


# --- answers ---------------------------------------------------------------------------------------------


def best_spans(
    start_logits: Tensor, end_logits: Tensor, first: Tensor, size: Tensor, max_answer_tokens: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(score, i, j) per row: the span i <= j < i + max_answer_tokens of context positions
    [first, first + size) with the largest start_logits[i] + end_logits[j] (the first such span on a tie;
    score -inf for a row without context tokens)."""
    s, e = start_logits.float(), end_logits.float()
    width = min(max_answer_tokens, s.size(1))
    pos = torch.arange(s.size(1), device=s.device)[None, :]
    outside = (pos < first[:, None]) | (pos >= (first + size)[:, None])
    s, e = s.masked_fill(outside, -math.inf), e.masked_fill(outside, -math.inf)
    ends = F.pad(e, (0, width - 1), value=-math.inf).unfold(1, width, 1)  # (B, T, width): e[b, i + k]
    scores = (s[:, :, None] + ends).flatten(1)
    flat = scores.argmax(dim=1)
    i = torch.div(flat, width, rounding_mode="floor")
    return scores.gather(1, flat[:, None])[:, 0], i, i + flat % width


class BestSpans:
    """Each question's best span over all its windows, which may come in any batches and order: the
    highest start + end score, the earlier window on a tie (so batching never changes an answer)."""

    def __init__(self, windows: Windows, max_answer_tokens: int):
        self.windows, self.max_answer_tokens = windows, max_answer_tokens
        n = len(windows.questions)
        self.score, self.row, self.span = np.full(n, -math.inf), np.full(n, -1), np.zeros((n, 2), np.int64)

    def add(self, rows: np.ndarray, logits: Tensor) -> None:
        """Take the span logits (B, T, 2) of windows ``rows`` into account."""
        w, device = self.windows, logits.device
        first, size = (torch.from_numpy(a[rows]).to(device) for a in (w.first, w.size))
        score, i, j = best_spans(logits[..., 0], logits[..., 1], first, size, self.max_answer_tokens)
        for r, sc, a, b in zip(rows.tolist(), score.tolist(), i.tolist(), j.tolist()):
            q = w.question[r]
            if sc > self.score[q] or (sc == self.score[q] > -math.inf and r < self.row[q]):
                self.score[q], self.row[q], self.span[q] = sc, r, (a, b)

    def answer(self, q: int) -> str:
        """Question ``q``'s answer: its best span's characters of the context ("" without any span)."""
        if self.row[q] < 0:
            return ""
        start, end = self.windows.chars(self.row[q], *self.span[q])
        return self.windows.questions[q].context[start:end]


def load_reader(path: str | Path, device: str = "auto") -> tuple[TaskModel, Tokenizer, dict[str, int]]:
    """A fine-tuned span model (head ``span``) from its folder or run folder, its tokenizer, and the
    windowing settings it was fine-tuned with (those its config.json records)."""
    model, tokenizer, max_len = load_classifier(path, device)
    if model.config.head != "span":
        raise LmforgeError(f"{path}: a {model.config.head} model, not an extractive QA model (head span)")
    task = json.loads((model_folder(path) / "config.json").read_text(encoding="utf-8")).get("task", {})
    return model, tokenizer, {"max_len": max_len, **{k: task[k] for k in SETTINGS[1:] if k in task}}


@torch.no_grad()
def predict_answers(
    model: TaskModel,
    tokenizer: Tokenizer,
    questions: list[Question],
    max_len: int,
    stride: int,
    max_answer_tokens: int,
    batch_size: int = 32,
) -> list[str]:
    """Each question's answer text, a span of its context; windows of similar length share a batch."""
    windows = make_windows(tokenizer, questions, max_len, stride, model.config.encoder)
    order = np.argsort(windows.lengths, kind="stable")
    best, device = BestSpans(windows, max_answer_tokens), next(model.parameters()).device
    model.eval()
    for k in range(0, len(order), batch_size):
        rows = order[k : k + batch_size]
        batch = {
            name: t.to(device) for name, t in window_inputs(windows, rows, tokenizer.pad_id or 0).items()
        }
        best.add(rows, model(batch["input_ids"], batch["key_valid"], batch["token_type_ids"]))
    return [best.answer(q) for q in range(len(questions))]


# --- the report ------------------------------------------------------------------------------------------


def qa_report(questions: list[Question], predictions: list[str]) -> dict[str, Any]:
    """EM and F1 in percent over all questions (each the best over a question's gold answers)."""
    sums = squad_sums(predictions, [q.answers for q in questions])
    return {"questions": len(questions), **squad_scores(sums)}


def write_qa_report(
    report: dict[str, Any], questions: list[Question], predictions: list[str], out_dir: str | Path, name: str
) -> tuple[Path, Path]:
    """``name``.json (the report) and ``name``-predictions.json ({id: answer}, what the official
    evaluate-v1.1.py reads) in ``out_dir``, each written atomically."""
    out = Path(out_dir)
    paths = out / f"{name}.json", out / f"{name}-predictions.json"
    answers = {q.id: a for q, a in zip(questions, predictions)}
    for path, content in zip(paths, (report, answers)):
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(content, indent=2, ensure_ascii=False), encoding="utf-8")
    return paths
