"""Translation and summarization as objectives of the one loop (``objective: translate | summarize``).

An encoder-decoder (``models/seq2seq.py``) learns p(y | x) = prod_t p(y_t | y_<t, x) by teacher forcing:
the decoder reads [start, y_1 .. y_{n}] and is scored on [y_1 .. y_n, eos], minimising the (optionally
label-smoothed) cross-entropy over the target tokens. Pairs come from ``evaluate/pairs.py`` (TSV, JSONL,
or line-aligned ``PREFIX.src`` / ``PREFIX.tgt`` files); batches hold pairs of similar length (the
fine-tuning base's length-sorted chunks), so padding is small. Every evaluation reports the dev loss and,
with ``task.dev_generate``, greedy-decodes the dev sources and scores them: BLEU (translate) or ROUGE
(summarize), which choose the exported model. Without ``task.model`` or ``task.tokenizer`` a joint
byte-level BPE is trained on both sides of the training pairs first (``out_dir/tokenizer``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from lmforge.atomic import atomic_directory
from lmforge.config import ConfigError
from lmforge.evaluate.overlap import bleu_from_statistics, bleu_statistics, rouge
from lmforge.evaluate.pairs import Pair, read_pairs
from lmforge.evaluate.seq2seq import bleu_tokenizer
from lmforge.infer.sampling import GenerationConfig
from lmforge.infer.seq2seq import encode_sources, generate_ids
from lmforge.models.io import read_model_config
from lmforge.models.losses import IGNORE_INDEX
from lmforge.models.seq2seq import Seq2SeqConfig
from lmforge.models.task import pad
from lmforge.tasks.base import Features, TaskObjective
from lmforge.tokenizer.train import train_bpe
from lmforge.train.causal_lm import round_up
from lmforge.train.config import TrainConfig
from lmforge.train.distributed import DistEnv
from lmforge.train.objective import Batch, model_to_train


class PairRows(Features):
    """Source ids and target ids (eos-terminated) of each pair; a row's length is the longer side."""

    def __init__(self, src: list[list[int]], tgt: list[list[int]], pad_id: int, start_id: int):
        self.src, self.tgt, self.pad_id, self.start_id = src, tgt, pad_id, start_id
        self.lengths = np.array([max(len(s), len(t)) for s, t in zip(src, tgt)], dtype=np.int64)

    def collate(self, index: np.ndarray) -> Batch:
        """src, src_valid; tgt_in = [start, y_1..y_n] and labels = [y_1..y_n, eos], padding ignored."""
        src, src_valid = pad([self.src[i] for i in index], self.pad_id)
        tgt_in, _ = pad([[self.start_id, *self.tgt[i][:-1]] for i in index], self.pad_id)
        labels, tgt_valid = pad([self.tgt[i] for i in index], self.pad_id)
        labels = labels.masked_fill(~tgt_valid, IGNORE_INDEX)
        return {
            "src": src,
            "src_valid": src_valid,
            "tgt_in": tgt_in,
            "labels": labels,
            "index": torch.from_numpy(index),
        }


class Seq2SeqTask(TaskObjective):
    """The shared part of translate and summarize; subclasses say how the dev outputs are scored."""

    fresh = ()  # no new head: every weight is the model's own

    # --- set up ----------------------------------------------------------------------------------------
    def setup(self, cfg: TrainConfig, env: DistEnv) -> TrainConfig:
        self.cfg = cfg
        self._check_config(cfg)
        t = cfg.task
        if not (t.model or t.tokenizer):
            tokenizer_dir = self._train_tokenizer(cfg)
            cfg = dataclasses.replace(cfg, task=dataclasses.replace(t, tokenizer=str(tokenizer_dir)))
        cfg = super().setup(cfg, env)
        if not cfg.task.dev_generate:  # no generated-text metric: the dev loss decides
            self.monitor = ("val_loss", "min")
        return cfg

    def _check_config(self, cfg: TrainConfig) -> None:
        t, name = cfg.task, cfg.objective
        if not isinstance(cfg.model, Seq2SeqConfig) and not t.model:
            raise ConfigError(
                f"objective={name} trains an encoder-decoder: set model.arch=seq2seq or task.model"
            )
        if not (t.train and t.src and t.tgt):
            raise ConfigError(f"objective={name} needs task.train, task.src and task.tgt")
        if t.monitor and t.monitor not in (*self.metrics, "val_loss"):
            raise ConfigError(f"task.monitor={t.monitor}: objective {name} reports {', '.join(self.metrics)}")

    def _train_tokenizer(self, cfg: TrainConfig) -> Path:
        """A joint byte-level BPE of both sides of the training pairs (kept, so a resumed run reuses it)."""
        out = Path(cfg.out_dir) / "tokenizer"
        if not (out / "tokenizer.json").is_file():
            pairs = self.read(cfg.task.train)
            texts = (text for p in pairs for text in (p.source, p.target))
            tokenizer = train_bpe(texts, cfg.task.vocab_size)
            with atomic_directory(out) as tmp:  # a killed run leaves no half-written tokenizer
                tokenizer.save(tmp)
        return out

    def _model_config(self, cfg: TrainConfig, labels: list[str]) -> Seq2SeqConfig:
        """The pretrained folder's config, or model.* with the tokenizer's vocabulary and start token."""
        t, tok = cfg.task, self.tokenizer
        if t.model:
            model = read_model_config(t.model)
            if not isinstance(model, Seq2SeqConfig):
                raise ConfigError(f"task.model={t.model} is a {model.arch} model, not an encoder-decoder")
        else:
            if tok.bos_id is None or tok.eos_id is None:
                raise ConfigError(
                    f"{t.tokenizer}: the tokenizer needs bos and eos tokens (the target's start and end)"
                )
            vocab = round_up(tok.vocab_size, cfg.vocab_multiple)
            model = dataclasses.replace(cfg.model, vocab_size=vocab, decoder_start_id=tok.bos_id)
        if tok.vocab_size > model.vocab_size:
            raise ConfigError(f"the tokenizer has {tok.vocab_size} tokens, the model {model.vocab_size}")
        if max(t.max_len, t.max_target_len) > model.max_seq_len:
            raise ConfigError(
                f"task.max_len / max_target_len exceed the model's {model.max_seq_len} positions"
            )
        return model

    def build_model(self) -> nn.Module:
        return model_to_train(self.cfg)

    # --- data --------------------------------------------------------------------------------------------
    def read(self, path: str) -> list[Pair]:
        t = self.cfg.task
        return read_pairs(path, t.src, t.tgt, t.columns or None)

    def features(self, pairs: list[Pair], train: bool) -> PairRows:
        """The pairs as rows; the dev pairs are kept too, for their references at each evaluation."""
        if not train:
            self.dev_pairs = pairs
        t, tok = self.cfg.task, self.tokenizer
        src = encode_sources(tok, [p.source for p in pairs], t.max_len)
        tgt = [
            [*ids[: t.max_target_len - 1], tok.eos_id] for ids in tok.encode_batch([p.target for p in pairs])
        ]
        return PairRows(src, tgt, tok.pad_id or 0, self.cfg.model.decoder_start_id)

    def task_meta(self) -> dict:
        t = self.cfg.task
        return {"src": t.src, "tgt": t.tgt, "max_len": t.max_len, "max_target_len": t.max_target_len}

    # --- loss and metrics --------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        smoothing = self.cfg.task.label_smoothing
        inputs = batch["src"], batch["tgt_in"], batch["src_valid"]
        return model(*inputs, labels=batch["labels"], label_smoothing=smoothing)

    def count(self, batch: Batch) -> int:
        return int((batch["labels"] != IGNORE_INDEX).sum())

    def tokens(self, batch: Batch) -> int:
        return int(batch["src_valid"].sum()) + self.count(batch)

    def flops_per_token(self, model: nn.Module) -> float | None:
        return model.flops_per_token(int(self.train.lengths.mean()))

    def eval_step(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """The plain (unsmoothed) cross-entropy, so val_loss is a log-perplexity; with dev_generate the
        greedy outputs' metric sums too."""
        loss = model(batch["src"], batch["tgt_in"], batch["src_valid"], labels=batch["labels"])
        if not self.cfg.task.dev_generate:
            return loss, {}
        pairs = [self.dev_pairs[i] for i in batch["index"].tolist()]
        valid = batch["src_valid"]
        sources = [row[m].tolist() for row, m in zip(batch["src"], valid)]
        cfg = GenerationConfig(max_new_tokens=self.cfg.task.max_target_len, temperature=0.0)
        unwrapped = getattr(model, "module", model)  # no packed copy: the weights change every step
        ids = generate_ids(unwrapped, sources, cfg, self.tokenizer.eos_id, pack=False)
        outputs = [self.tokenizer.decode(x) for x in ids]
        return loss, self.score(outputs, pairs)

    def score(self, outputs: list[str], pairs: list[Pair]) -> dict[str, Tensor]:
        """Sums over the batch that ``val_metrics`` turns into the dev metrics."""
        raise NotImplementedError


class Translate(Seq2SeqTask):
    metrics = ("val_bleu",)

    def bleu_tokenize(self) -> str:
        return bleu_tokenizer(self.cfg.task.bleu_tokenize, self.cfg.task.tgt)

    def score(self, outputs: list[str], pairs: list[Pair]) -> dict[str, Tensor]:
        stats = bleu_statistics(outputs, [list(p.references) for p in pairs], self.bleu_tokenize())
        return {f"bleu/{i}": torch.tensor(float(x)) for i, x in enumerate(stats)}

    def val_metrics(self, val_loss: float, sums: dict[str, float]) -> dict[str, float]:
        metrics = {}
        if self.cfg.task.dev_generate:
            stats = [sums[f"bleu/{i}"] for i in range(sum(k.startswith("bleu/") for k in sums))]
            metrics["val_bleu"] = bleu_from_statistics(stats, self.bleu_tokenize())
        self.last_val = {"val_loss": val_loss, **metrics}
        return metrics


class Summarize(Seq2SeqTask):
    metrics = ("val_rougeL", "val_rouge1", "val_rouge2")

    def score(self, outputs: list[str], pairs: list[Pair]) -> dict[str, Tensor]:
        scores = rouge(outputs, [list(p.references) for p in pairs], ("rouge1", "rouge2", "rougeL"))
        n = len(outputs)
        return {**{k: torch.tensor(v.f1 * n) for k, v in scores.items()}, "segments": torch.tensor(float(n))}

    def val_metrics(self, val_loss: float, sums: dict[str, float]) -> dict[str, float]:
        metrics = {}
        if self.cfg.task.dev_generate:
            metrics = {f"val_{k}": sums[k] / sums["segments"] for k in ("rougeL", "rouge1", "rouge2")}
        self.last_val = {"val_loss": val_loss, **metrics}
        return metrics
