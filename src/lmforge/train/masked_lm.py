"""Masked language modelling (BERT pretraining): predict the tokens hidden in a bidirectional context.

Each sequence is [CLS] w [SEP] with w a window of the token shards. 15 % of the w positions are chosen;
of those 80 % become [MASK], 10 % a random token, 10 % stay as they are, and the loss is
-1/|M| sum_{t in M} log p(w_t | the corrupted sequence) over the chosen set M only. With ``mlm.nsp`` the
window is cut into segments A and B, [CLS] A [SEP] B [SEP], and half the time B is replaced by a stretch
from elsewhere in the corpus; the pooled [CLS] vector predicts which (next-sentence prediction), and that
cross-entropy is added to the loss.

A batch depends on (seed, step) only and each row's corruption on (seed, step, its global row index), so
a run resumes exactly and draws the same global batch at any world size.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor, nn

from lmforge.errors import LmforgeError
from lmforge.models import registry
from lmforge.models.io import save_model
from lmforge.models.losses import IGNORE_INDEX, cross_entropy, perplexity
from lmforge.tokenizer.shards import TokenShards
from lmforge.train.causal_lm import round_up
from lmforge.train.config import MaskingConfig, TrainConfig
from lmforge.train.data import SPLIT_TAGS, WindowSampler
from lmforge.train.distributed import DistEnv
from lmforge.train.objective import Batch, Objective


def mask_tokens(
    ids: np.ndarray,
    maskable: np.ndarray,
    mask_id: int,
    vocab: int,
    rng: np.random.Generator,
    m: MaskingConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """(corrupted ids, targets): targets hold the original id at the chosen positions, IGNORE_INDEX
    elsewhere. ``maskable`` excludes [CLS], [SEP] and padding; random replacements are drawn from
    ``vocab``."""
    chosen = (rng.random(ids.shape) < m.rate) & maskable
    how = rng.random(ids.shape)  # which corruption a chosen position gets
    to_mask = chosen & (how < m.mask)
    to_random = chosen & (how >= m.mask) & (how < m.mask + m.random)
    corrupted = np.where(to_mask, mask_id, np.where(to_random, rng.integers(0, vocab, ids.shape), ids))
    return corrupted, np.where(chosen, ids, IGNORE_INDEX)


class PretrainingModel(nn.Module):
    """The encoder with its masked-LM head, and the next-sentence classifier on the pooled [CLS]."""

    def __init__(self, encoder: nn.Module, nsp: bool):
        super().__init__()
        self.encoder = encoder
        self.nsp = nn.Linear(encoder.config.d_model, 2) if nsp else None

    def forward(
        self, input_ids: Tensor, token_type_ids: Tensor, chosen: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """(masked-LM logits (M, vocab) at the ``chosen`` (B, T) positions only, NSP logits or None).

        The head runs on the chosen 15 % alone: the loss reads no other position, and the vocabulary
        projection over all B·T positions would cost about as much as the whole encoder."""
        hidden = self.encoder(input_ids, token_type_ids=token_type_ids, head=False)
        is_next = self.nsp(self.encoder.pool(hidden)) if self.nsp is not None else None
        return self.encoder.mlm(hidden[chosen]), is_next


class MaskedLM(Objective):
    def setup(self, cfg: TrainConfig, env: DistEnv) -> TrainConfig:
        if cfg.model.arch != "bert" or not cfg.model.mlm_head:
            raise LmforgeError(
                "objective=mlm trains an encoder: set model.arch=bert (and model.mlm_head=true)"
            )
        self.shards = TokenShards(cfg.data.shards)
        self.tokenizer = tok = self.shards.tokenizer()
        if None in (tok.cls_id, tok.sep_id, tok.mask_id):
            raise LmforgeError(f"{cfg.data.shards}: masked-LM needs a tokenizer with [CLS], [SEP] and [MASK]")
        vocab = round_up(self.shards.vocab_size, cfg.vocab_multiple)
        model = dataclasses.replace(cfg.model, vocab_size=vocab, pooler=cfg.model.pooler or cfg.mlm.nsp)
        self.cfg = cfg = dataclasses.replace(cfg, model=model)
        self.rank, self.rows = env.rank, cfg.batch_size * cfg.grad_accum
        self.n = cfg.data.seq_len - (3 if cfg.mlm.nsp else 2)  # window tokens besides [CLS] and [SEP]s
        if self.n < 2:
            raise LmforgeError(f"data.seq_len ({cfg.data.seq_len}) leaves no room for a window")
        global_batch, world = self.rows * env.world_size, env.world_size
        self.train_data = WindowSampler(
            self.shards, "train", self.n - 1, global_batch, cfg.seed, env.rank, world
        )
        self.val_data = None
        if cfg.eval_batches and self.shards.pieces("val", self.n - 1):
            self.val_data = WindowSampler(
                self.shards, "val", self.n - 1, global_batch, cfg.seed, env.rank, world
            )
        return cfg

    def build_model(self) -> nn.Module:
        return PretrainingModel(registry.build(self.cfg.model), self.cfg.mlm.nsp)

    def train_batch(self, step: int) -> Batch:
        return self._batch(self.train_data, step)

    def val_batches(self):
        if self.val_data is not None:
            for k in range(self.cfg.eval_batches):
                yield self._batch(self.val_data, k)

    def _batch(self, sampler: WindowSampler, k: int) -> Batch:
        """Rows of [CLS] A [SEP] (B [SEP]) with their masked-LM corruption and targets."""
        x, y = sampler.batch(k)
        windows = torch.cat([x, y[:, -1:]], dim=1).numpy()  # n tokens each
        rows = []
        for i, w in enumerate(windows):
            rng = np.random.default_rng(
                [self.cfg.seed, SPLIT_TAGS[sampler.split], k, self.rank * self.rows + i]
            )
            rows.append(self._row(w, sampler, rng))
        return {key: torch.from_numpy(np.stack([r[key] for r in rows])) for key in rows[0]}

    def _row(self, w: np.ndarray, sampler: WindowSampler, rng: np.random.Generator) -> dict[str, np.ndarray]:
        tok = self.tokenizer
        if self.cfg.mlm.nsp:
            cut = int(rng.integers(len(w) // 4, 3 * len(w) // 4 + 1))
            is_next = int(rng.random() < 0.5)
            b = w[cut:] if is_next else sampler.window(int(rng.integers(sampler.starts)))[: len(w) - cut]
            ids = np.concatenate([[tok.cls_id], w[:cut], [tok.sep_id], b, [tok.sep_id]])
            segments = np.concatenate([np.zeros(cut + 2), np.ones(len(b) + 1)]).astype(np.int64)
        else:
            ids, is_next = np.concatenate([[tok.cls_id], w, [tok.sep_id]]), 1
            segments = np.zeros(len(ids), dtype=np.int64)
        maskable = (ids != tok.cls_id) & (ids != tok.sep_id)
        corrupted, targets = mask_tokens(
            ids, maskable, tok.mask_id, self.shards.vocab_size, rng, self.cfg.mlm
        )
        return {
            "input_ids": corrupted.astype(np.int64),
            "targets": targets.astype(np.int64),
            "token_type_ids": segments,
            "is_next": np.int64(is_next),
        }

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        return self.eval_step(model, batch)[0]

    def eval_step(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """MLM loss (+ NSP loss), and the counts of masked tokens and next-sentence labels predicted right."""
        chosen = batch["targets"] != IGNORE_INDEX
        logits, is_next = model(batch["input_ids"], batch["token_type_ids"], chosen)
        targets = batch["targets"][chosen]
        loss = cross_entropy(logits, targets)
        sums = {"mlm_correct": (logits.argmax(-1) == targets).sum(), "mlm_total": chosen.sum()}
        if is_next is not None:
            loss = loss + cross_entropy(is_next, batch["is_next"])
            sums["nsp_correct"] = (is_next.argmax(-1) == batch["is_next"]).sum()
            sums["nsp_total"] = torch.tensor(len(is_next))
        return loss, sums

    def count(self, batch: Batch) -> int:
        return int((batch["targets"] != IGNORE_INDEX).sum())

    def val_metrics(self, val_loss: float, sums: dict[str, float]) -> dict[str, float]:
        out = {"val_mlm_acc": sums["mlm_correct"] / max(sums["mlm_total"], 1)}
        if "nsp_total" in sums:
            out["val_nsp_acc"] = sums["nsp_correct"] / max(sums["nsp_total"], 1)
        else:  # without NSP the loss is the masked tokens' mean NLL
            out["val_ppl"] = perplexity(val_loss)
        return out

    def flops_per_token(self, model: nn.Module) -> float | None:
        return model.encoder.flops_per_token(self.cfg.data.seq_len)

    def export(self, model: nn.Module, out_dir, extra: dict):
        """The encoder with its MLM head (the NSP classifier is a pretraining device and is not kept)."""
        return save_model(model.encoder, self.tokenizer, out_dir, extra=extra)
