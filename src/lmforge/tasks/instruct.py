"""Instruction tuning (supervised fine-tuning) of a decoder as an objective of the one loop
(``objective: instruct``).

Each example is a conversation rendered by the chat template (``tokenizer/chat.py``: the model's own,
``task.chat_template``, or lmforge's ChatML). The loss is the causal LM's cross-entropy on the
assistant's tokens only:

    L = -1/|A| sum_{t in A} log p(x_t | x_<t),   A = the answer tokens of the batch,

so the model learns to answer, not to write questions. Short conversations are packed into rows of
``task.max_len`` tokens (best fit, longest first); a row's examples never see each other (a
block-diagonal causal mask) and each starts at position 0, so a packed row trains exactly like the
examples one by one, with no padding. The exported folder carries the template in its tokenizer config,
so ``lmforge chat``, ``serve`` and transformers render prompts the way the model was trained.

Data: JSONL, one example per line, as ``{"messages": [{role, content}, ...]}`` (the last message the
assistant's), ``{"instruction", "input"?, "output"}`` (Alpaca) or ``{"prompt", "response"|"completion"}``;
the pair forms may add a ``system`` field.
"""

from __future__ import annotations

import bisect
import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lmforge.config import ConfigError
from lmforge.errors import LmforgeError
from lmforge.evaluate.classify import json_records
from lmforge.models.gpt import GPTConfig
from lmforge.models.io import read_model_config
from lmforge.models.losses import IGNORE_INDEX
from lmforge.tasks.base import Features, TaskObjective
from lmforge.tokenizer.chat import Message, check_messages, encode_chat, template_of
from lmforge.train.causal_lm import round_up
from lmforge.train.config import TrainConfig
from lmforge.train.distributed import DistEnv
from lmforge.train.objective import Batch, model_to_train

PROMPT_FIELDS = (("instruction", "output"), ("prompt", "response"), ("prompt", "completion"))


def conversation(record: dict[str, Any], where: str) -> list[Message]:
    """One JSONL record as messages (see the module's data formats)."""
    if "messages" in record:
        return check_messages(record["messages"], f"{where}: field 'messages'")
    for ask, answer in PROMPT_FIELDS:
        if ask in record and answer in record:
            question = record[ask]
            if record.get("input"):
                question = f"{question}\n\n{record['input']}"
            system = [{"role": "system", "content": record["system"]}] if record.get("system") else []
            messages = [*system, {"role": "user", "content": question}]
            return check_messages([*messages, {"role": "assistant", "content": record[answer]}], where)
    raise LmforgeError(
        f"{where}: no conversation: give 'messages', or 'instruction' and 'output', "
        "or 'prompt' and 'response' (or 'completion')"
    )


def read_conversations(path: str | Path) -> list[list[Message]]:
    """Every conversation of a JSONL file; errors name the file, line and field."""
    p = Path(path)
    if not p.is_file():
        raise LmforgeError(f"{p}: no such file")
    out = [conversation(record, f"{p}:{number}") for number, record in json_records(p)]
    if not out:
        raise LmforgeError(f"{p}: no conversations")
    return out


def best_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Examples (by index) packed into rows of ``capacity`` slots: longest first, each into the row
    it fills best (least room left), a new row when none has room."""
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row), sorted
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        at = bisect.bisect_left(free, (lengths[i], -1))
        if at == len(free):
            rows.append([i])
            room, row = capacity - lengths[i], len(rows) - 1
        else:
            room, row = free.pop(at)
            rows[row].append(i)
            room -= lengths[i]
        bisect.insort(free, (room, row))
    return rows


class PackedRows(Features):
    """Examples (inputs x_<n, targets x_>1 with IGNORE_INDEX off the answers) packed into rows."""

    def __init__(self, examples: list[tuple[list[int], list[int]]], rows: list[list[int]], pad_id: int):
        self.examples, self.rows, self.pad_id = examples, rows, pad_id
        self.lengths = np.array([sum(len(examples[i][0]) for i in r) for r in rows], dtype=np.int64)

    def collate(self, index: np.ndarray) -> Batch:
        """input_ids, targets (B, T), right-padded; where a row holds several examples also positions
        (each example from 0) and attention (B, 1, T, T): causal within an example, nothing across."""
        width = int(self.lengths[index].max())
        b = len(index)
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        targets = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
        positions = torch.zeros((b, width), dtype=torch.long)
        segment = torch.full((b, width), -1, dtype=torch.long)  # padding: a segment of its own
        for r, row in enumerate(index):
            at = 0
            for s, i in enumerate(self.rows[row]):
                x, y = self.examples[i]
                n = len(x)
                ids[r, at : at + n], targets[r, at : at + n] = torch.tensor(x), torch.tensor(y)
                positions[r, at : at + n] = torch.arange(n)
                segment[r, at : at + n] = s
                at += n
        batch = {"input_ids": ids, "targets": targets, "valid": segment >= 0}
        if max(len(self.rows[row]) for row in index) > 1:
            causal = torch.ones(width, width, dtype=torch.bool).tril()
            batch["positions"] = positions
            batch["attention"] = ((segment[:, :, None] == segment[:, None, :]) & causal)[:, None]
        return batch


class Instruct(TaskObjective):
    """Supervised fine-tuning on the answers of chat conversations."""

    fresh = ()  # no new head: the decoder's own output layer predicts the answers

    # --- set up ----------------------------------------------------------------------------------------
    def setup(self, cfg: TrainConfig, env: DistEnv) -> TrainConfig:
        path = cfg.task.chat_template
        self.template_file = Path(path).read_text(encoding="utf-8") if path else None  # read once
        return super().setup(cfg, env)

    def _check_config(self, cfg: TrainConfig) -> None:
        t = cfg.task
        if not t.train:
            raise ConfigError("objective=instruct needs task.train: a JSONL file of conversations")
        if not t.model and not (isinstance(cfg.model, GPTConfig) and t.tokenizer):
            raise ConfigError(
                "objective=instruct fine-tunes a decoder: set task.model (a gpt model folder), or "
                "model.arch=gpt and task.tokenizer to start from random weights"
            )
        if t.monitor and t.monitor != "val_loss":
            raise ConfigError(f"task.monitor={t.monitor}: objective instruct reports val_loss")

    def _model_config(self, cfg: TrainConfig, labels: list[str]) -> GPTConfig:
        """The pretrained folder's decoder, or model.* with the tokenizer's vocabulary."""
        t = cfg.task
        if t.model:
            model = read_model_config(t.model)
            if not isinstance(model, GPTConfig):
                raise ConfigError(f"task.model={t.model} is a {model.arch} model, not a decoder (gpt)")
        else:
            vocab = round_up(self.tokenizer.vocab_size, cfg.vocab_multiple)
            model = dataclasses.replace(cfg.model, vocab_size=vocab)
        if self.tokenizer.vocab_size > model.vocab_size:
            raise ConfigError(
                f"the tokenizer has {self.tokenizer.vocab_size} tokens, the model {model.vocab_size}"
            )
        if t.max_len > model.max_seq_len:
            raise ConfigError(f"task.max_len ({t.max_len}) exceeds the model's context ({model.max_seq_len})")
        return model

    def build_model(self) -> nn.Module:
        return model_to_train(self.cfg)

    # --- data --------------------------------------------------------------------------------------------
    def read(self, path: str) -> list[list[Message]]:
        return read_conversations(path)

    def features(self, conversations: list[list[Message]], train: bool) -> PackedRows:
        """Conversations as (inputs, answer targets), cut to max_len; the training ones packed unless
        task.pack=false."""
        t, tok = self.cfg.task, self.tokenizer
        template = tok.chat_template = template_of(tok, self.template_file)  # the export carries it
        examples, dropped = [], 0
        for messages in conversations:
            ids, answer = encode_chat(template, messages, tok)
            ids, answer = ids[: t.max_len + 1], answer[: t.max_len + 1]
            targets = [x if a else IGNORE_INDEX for x, a in zip(ids[1:], answer[1:])]
            if all(y == IGNORE_INDEX for y in targets):
                dropped += 1  # cut before its answer: nothing to learn
                continue
            examples.append((ids[:-1], targets))
        if dropped and self.rank == 0:
            print(
                f"warning: {dropped} of {len(conversations)} {'train' if train else 'dev'} conversations "
                f"have no answer token within task.max_len={t.max_len}; skipped",
                file=sys.stderr,
            )
        lengths = [len(x) for x, _ in examples]
        # Dev conversations one per row: every rank gets some (the loss is the same packed or not).
        rows = best_fit(lengths, t.max_len) if t.pack and train else [[i] for i in range(len(examples))]
        return PackedRows(examples, rows, tok.pad_id or tok.eos_id or 0)

    # --- loss ----------------------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        return model(
            batch["input_ids"],
            positions=batch.get("positions"),
            attention=batch.get("attention"),
            targets=batch["targets"],
        )

    def count(self, batch: Batch) -> int:
        return int((batch["targets"] != IGNORE_INDEX).sum())

    def tokens(self, batch: Batch) -> int:
        return int(batch["valid"].sum())
