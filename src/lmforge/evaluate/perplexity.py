"""Perplexity: PPL = exp(-1/N sum_t log p(x_t | x_<t)).

On token shards (``perplexity``) a split is cut into non-overlapping windows of ``seq_len + 1`` tokens;
every token but each window's first is predicted once, from the tokens before it in its window. On one
token sequence (``sliding_nll``) the targets go in blocks of ``stride`` tokens, each predicted from
the ``context`` tokens before the block's end: every token after the first is predicted once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmforge.checkpoint import load_latest_intact
from lmforge.config import read_yaml
from lmforge.device import pick_device
from lmforge.errors import LmforgeError
from lmforge.models import losses, registry
from lmforge.models.io import load_model
from lmforge.tokenizer.core import Tokenizer
from lmforge.tokenizer.shards import TokenShards, sequential_windows


def load_for_eval(path: str | Path, device: str = "auto") -> tuple[nn.Module, int, Tokenizer | None]:
    """A model from a model folder, or from a run folder (its exported model, else its last intact
    checkpoint), with the window length to score at (the run's training length where known) and its
    tokenizer (the model folder's, else the run's shards'), to check the data against."""
    p, dev = Path(path), pick_device(device)
    run_cfg = read_yaml(p / "config.yaml") if (p / "config.yaml").is_file() else {}
    shards = Path(run_cfg.get("data", {}).get("shards", "")) if run_cfg else None
    tokenizer = Tokenizer.load(shards) if shards and (shards / "tokenizer.json").is_file() else None
    if (p / "config.json").is_file():
        model, tokenizer = load_model(p, device=dev)
    elif (p / "model" / "config.json").is_file():
        model, tokenizer = load_model(p / "model", device=dev)
    elif run_cfg and (found := load_latest_intact(p)) is not None:
        model = registry.build(registry.config_from_dict(run_cfg["model"]))
        model.load_state_dict(found[1]["model"])
        model = model.to(dev).eval()
    else:
        raise LmforgeError(f"{p}: neither a model folder nor a run folder with a model or checkpoint")
    seq_len = run_cfg.get("data", {}).get("seq_len", model.config.max_seq_len)
    return model, seq_len, tokenizer


@torch.no_grad()
def perplexity(
    model: nn.Module,
    shards_dir: str | Path,
    split: str = "val",
    seq_len: int | None = None,
    batch_size: int = 8,
    max_tokens: int | None = None,
    tokenizer: Tokenizer | None = None,
) -> dict:
    """Mean negative log-likelihood (nats/token) and perplexity of ``model`` on a shards split.

    ``seq_len`` defaults to the model's context; ``tokenizer`` (the model's) is checked to be the one
    that made the shards: ids from another tokenizer give a number that means nothing.
    """
    shards = TokenShards(shards_dir)
    context = model.config.max_seq_len
    seq_len = context if seq_len is None else seq_len
    if not 1 <= seq_len <= context:
        raise LmforgeError(f"seq_len must be between 1 and the model's context of {context}, got {seq_len}")
    if batch_size < 1 or (max_tokens is not None and max_tokens < 1):
        raise LmforgeError(f"batch_size and max_tokens must be positive, got {batch_size} and {max_tokens}")
    if tokenizer is not None:
        shards.check_tokenizer(tokenizer, "the model")
    if shards.vocab_size > model.config.vocab_size:
        raise LmforgeError(
            f"the shards use a {shards.vocab_size}-token vocabulary; the model has {model.config.vocab_size}"
        )
    device = model.lm_head.weight.device
    model.eval()
    nll, count = 0.0, 0
    batch: list[np.ndarray] = []

    def score(rows: list[np.ndarray]) -> None:
        nonlocal nll, count
        w = torch.from_numpy(np.stack(rows).astype(np.int64)).to(device)
        nll += losses.cross_entropy(model(w[:, :-1]), w[:, 1:], reduction="sum").item()
        count += w[:, 1:].numel()

    for window in sequential_windows(shards, split, seq_len):
        batch.append(window)
        if len(batch) == batch_size:
            score(batch)
            batch = []
            if max_tokens is not None and count >= max_tokens:
                break
    if batch and (max_tokens is None or count < max_tokens):
        score(batch)
    if count == 0:
        raise LmforgeError(f"the {split} split holds no window of {seq_len + 1} tokens; lower --seq-len")
    mean = nll / count
    return {
        "split": split,
        "tokens": count,
        "seq_len": seq_len,
        "loss": mean,
        "perplexity": losses.perplexity(mean),
    }


@torch.no_grad()
def sliding_nll(model: nn.Module, ids: list[int], context: int, stride: int) -> tuple[float, int]:
    """(sum of -log p(x_t | x_<t) over t >= 1, number of tokens scored) for one sequence ``ids``;
    PPL = exp(sum / count), bits per byte = sum / (ln 2 * bytes of the text).

    Targets go in blocks of ``stride``; each block is predicted by one forward over the ``context``
    tokens before its end, so every token has at least ``context - stride + 1`` tokens before it
    (all of them near the start).
    """
    if not 0 < stride <= context <= model.config.max_seq_len:
        raise LmforgeError(
            f"need 0 < stride ({stride}) <= context ({context}) <= the model's {model.config.max_seq_len}"
        )
    tokens = torch.tensor(ids, device=model.lm_head.weight.device)
    nll = 0.0
    for first in range(1, len(ids), stride):
        end = min(first + stride, len(ids))  # targets first..end-1
        start = max(0, end - 1 - context)
        targets = torch.full((end - 1 - start,), losses.IGNORE_INDEX, device=tokens.device)
        targets[first - 1 - start :] = tokens[first:end]  # position j predicts token start + j + 1
        # the model's fused head + CE: a long window's (context x vocabulary) logits are never stored
        nll += model(tokens[None, start : end - 1], targets=targets[None]).item() * (end - first)
    return nll, max(len(ids) - 1, 0)
