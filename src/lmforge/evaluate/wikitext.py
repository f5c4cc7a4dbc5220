"""WikiText-2 word perplexity and bits per byte, tokenizer-independent, as lm-evaluation-harness's
``wikitext`` task computes them, so that models with different tokenizers compare:

    word_perplexity = exp(-sum_d loglik(d) / sum_d words(d))
    bits_per_byte   = -sum_d loglik(d) / sum_d bytes(d) / ln 2,    byte_perplexity = 2^bits_per_byte

over the test split's articles d (a new one at each `` = Title = `` line). loglik(d) is the log-likelihood
of the detokenised article, scored in rolling windows of the model's context: the first window predicts
its tokens after a prefix token (bos, else eos), each next one the next ``max_seq_len`` tokens after the
one token before them (the harness's windows with context 1). Words and bytes are counted on the
original, tokenised article, as the harness counts them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.evaluate.loglik import CHUNK_LOGITS, continuation_scores
from lmforge.tokenizer.core import Tokenizer


def wikitext_pages(text: str) -> list[str]:
    """The articles of a wiki.*.raw file: a page starts at each top-level `` = Title = `` line."""
    pages, lines = [], []
    for line in text.split("\n"):
        heading = line.replace("= = =", "===").replace("= =", "==").strip()
        if heading.startswith("= ") and heading.endswith(" ="):
            page = "\n".join(lines)
            if page.strip():
                pages.append(page)
            lines = []
        lines.append(line)
    pages.append("\n".join(lines))
    return pages


def detokenize(page: str) -> str:
    """WikiText's tokenisation undone (the harness's ``wikitext_detokenizer``, rule for rule)."""
    s = page.replace("s '", "s'")
    s = re.sub(r"/' [0-9]/", r"/'[0-9]/", s)
    for sep in "-,.":
        s = s.replace(f" @{sep}@ ", sep)
    for mark in ":;.!?,":
        s = s.replace(f" {mark} ", f"{mark} ")
    s = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", s)
    s = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", s)
    s = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", s)
    s = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', s)
    s = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", s)
    s = s.replace("= = = =", "====").replace("= = =", "===").replace("= =", "==")
    s = s.replace(" " + chr(176) + " ", chr(176))
    s = s.replace(" \n", "\n").replace("\n ", "\n")
    s = s.replace(" N ", " 1 ")
    return s.replace(" 's", "'s")


def rolling_windows(tokens: list[int], prefix: int, width: int) -> list[tuple[list[int], int]]:
    """(inputs, how many of the last targets to score) per window: inputs[i] predicts the token after
    it, the targets being ``tokens`` shifted by one; every token is scored exactly once."""
    if not tokens:
        return []
    first = min(width, len(tokens))
    windows = [([prefix, *tokens[: first - 1]], first)]
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, width)
        end = done + n
        windows.append((tokens[max(0, end - width - 1) : end - 1], n))
        done = end
    return windows


@torch.no_grad()
def rolling_loglik(model: nn.Module, tokens: list[int], prefix: int, batch_size: int = 8) -> float:
    """log p(tokens) in rolling windows of the model's context (``rolling_windows``)."""
    width = model.config.max_seq_len
    windows = rolling_windows(tokens, prefix, width)
    targets_of = []  # each window's targets: its inputs shifted by one, then the next token
    done = 0
    for inputs, n in windows:
        targets_of.append(tokens[done + n - len(inputs) : done + n])
        done += n
    device = model.lm_head.weight.device
    total = 0.0
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        longest = max(len(w[0]) for w in chunk)
        ids = torch.tensor([w[0] + [0] * (longest - len(w[0])) for w in chunk], device=device)
        hidden = model(ids, head=False)
        step = max(1, CHUNK_LOGITS // model.lm_head.weight.size(0))
        for row, ((inputs, n), targets) in enumerate(zip(chunk, targets_of[i : i + batch_size])):
            states = hidden[row, len(inputs) - n : len(inputs)]
            scored = torch.tensor(targets[-n:], device=device)
            for j in range(0, n, step):  # the logits of a few positions at a time
                part = slice(j, j + step)
                logits = model.lm_head(states[part])[None]
                every = torch.ones(logits.shape[:2], dtype=torch.bool, device=device)
                total += float(continuation_scores(logits, scored[None, part], every)[0])
    return total


def run_wikitext(
    model: nn.Module, tokenizer: Tokenizer, path: str | Path, limit: int | None = None, batch_size: int = 8
) -> dict:
    """Word perplexity, byte perplexity and bits per byte over the articles of a wiki.*.raw file."""
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"{path}: no such WikiText file (wiki.test.raw of wikitext-2-raw-v1)")
    prefix = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    if prefix is None:
        raise LmforgeError("the tokenizer has neither bos nor eos: nothing to start the first window from")
    pages = wikitext_pages(path.read_text(encoding="utf-8"))[:limit]
    loglik = [rolling_loglik(model, tokenizer.encode(detokenize(p)), prefix, batch_size) for p in pages]
    words = sum(len(re.split(r"\s+", p)) for p in pages)
    nbytes = sum(len(p.encode("utf-8")) for p in pages)
    bits = -sum(loglik) / nbytes / math.log(2)
    return {
        "task": "wikitext",
        "items": len(pages),
        "word_perplexity": math.exp(-sum(loglik) / words),
        "byte_perplexity": 2**bits,
        "bits_per_byte": bits,
        "per_item": [{"loglik": ll} for ll in loglik],
    }
