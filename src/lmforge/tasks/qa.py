"""Extractive question answering as an objective of the one loop (``objective: qa``): fine-tune a span
head (``models/task.py``) to point at the first gold answer's first and last tokens, minimising
(CE(start) + CE(end)) / 2 per window over the non-padding positions (Devlin et al. 2019, §4.2).

Questions are read and cut into windows by ``evaluate/qa.py`` (``task.max_len`` tokens per window,
``task.stride`` context tokens shared by consecutive windows; a window without the whole answer targets
position 0). Every evaluation answers each dev question with its best span over all its windows and
reports SQuAD v1.1 EM and F1 (as fractions: 1.0 = 100). The backbone, batches and export are the
fine-tuning base's (``tasks/base.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lmforge.evaluate.metrics import squad_scores, squad_sums
from lmforge.evaluate.qa import BestSpans, Question, Windows, make_windows, read_squad, window_inputs
from lmforge.models.losses import cross_entropy
from lmforge.tasks.base import Features, TaskObjective
from lmforge.train.objective import Batch


class SpanRows(Features):
    """The windows of a split; a batch also carries each row's window index (``row``), through which
    ``eval_step`` finds the row's question and context."""

    def __init__(self, windows: Windows, pad_id: int):
        self.windows, self.pad_id = windows, pad_id
        self.lengths = windows.lengths

    def collate(self, index: np.ndarray) -> Batch:
        w, index = self.windows, np.asarray(index, dtype=np.int64)
        targets = {"start": torch.from_numpy(w.start[index]), "end": torch.from_numpy(w.end[index])}
        return {**window_inputs(w, index, self.pad_id), **targets, "row": torch.from_numpy(index)}


class ExtractSpans(TaskObjective):
    head = "span"
    metrics = ("val_f1", "val_em")

    def read(self, path: str) -> list[Question]:
        return read_squad(path)

    def features(self, examples: list[Question], train: bool) -> SpanRows:
        t = self.cfg.task
        windows = make_windows(self.tokenizer, examples, t.max_len, t.stride, self.cfg.model.encoder)
        return SpanRows(windows, self.tokenizer.pad_id or 0)

    def task_meta(self) -> dict[str, Any]:
        t = self.cfg.task
        return {"max_len": t.max_len, "stride": t.stride, "max_answer_tokens": t.max_answer_tokens}

    # --- loss and metrics ----------------------------------------------------------------------------
    def _logits(self, model: nn.Module, batch: Batch) -> Tensor:
        """Span logits (B, T, 2), -inf at padding so that no probability goes there."""
        logits = model(batch["input_ids"], batch["key_valid"], batch["token_type_ids"])
        return logits.masked_fill(~batch["key_valid"][..., None], float("-inf"))

    def _loss(self, logits: Tensor, batch: Batch) -> Tensor:
        return (
            cross_entropy(logits[..., 0], batch["start"]) + cross_entropy(logits[..., 1], batch["end"])
        ) / 2

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        """Mean over windows of (CE(start) + CE(end)) / 2."""
        return self._loss(self._logits(model, batch), batch)

    def val_batches(self) -> Iterator[Batch]:
        """Whole questions dealt round-robin to the ranks (by the length of their longest window, so a
        batch pads little), each rank's windows in question order, cut into batches of ``rows``. The
        loop may split a batch into micro-batches anywhere: ``eval_step`` carries a question's best span
        over them and scores the question at its last window."""
        w = self.dev.windows
        self._best = BestSpans(w, self.cfg.task.max_answer_tokens)
        n = len(w.questions)
        if n == 0:
            return
        begin = np.searchsorted(w.question, np.arange(n))
        end = np.searchsorted(w.question, np.arange(n), side="right")
        longest = np.maximum.reduceat(self.dev.lengths, begin)
        mine = np.argsort(longest, kind="stable")[self.rank :: self.world]
        rows = np.concatenate([np.arange(begin[q], end[q]) for q in mine])
        for i in range(0, len(rows), self.rows):
            yield self.dev.collate(rows[i : i + self.rows])

    def eval_step(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """Mean loss, and the SQuAD sums (exact_match, f1, total) of the questions whose last window is in
        this micro-batch; the same keys every time, zeros included, so every rank sends the same."""
        logits = self._logits(model, batch)
        rows = batch["row"].cpu().numpy()
        self._best.add(rows, logits)
        w = self.dev.windows
        done = [int(w.question[r]) for r in rows if w.last[r]]
        gold = [w.questions[q].answers for q in done]
        sums = squad_sums([self._best.answer(q) for q in done], gold)
        device = logits.device
        return self._loss(logits, batch), {k: torch.tensor(float(v), device=device) for k, v in sums.items()}

    def val_metrics(self, val_loss: float, sums: dict[str, float]) -> dict[str, float]:
        scores = squad_scores(sums)
        metrics = {"val_f1": scores["f1"] / 100, "val_em": scores["exact_match"] / 100}
        self.last_val = {"val_loss": val_loss, **metrics}
        return metrics
