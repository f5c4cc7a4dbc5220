"""WikiText-2 word perplexity and bits per byte, tokenizer-independent, as lm-evaluation-harness's
``wikitext`` task computes them, so that models with different tokenizers compare:

    word_perplexity = exp(-sum_d loglik(d) / sum_d words(d))
    bits_per_byte   = -sum_d loglik(d) / sum_d bytes(d) / ln 2,    byte_perplexity = 2^bits_per_byte

over the test split's articles d (a new one at each `` = Title = `` line). loglik(d) is the log-likelihood
of the detokenised article after a prefix token (bos, else eos), scored in disjoint blocks of the model's
context, each block from the ``max_seq_len`` tokens before its end (``evaluate/perplexity.py:
sliding_nll`` with stride = context: exactly the harness's rolling windows with context 1). Words and
bytes are counted on the original, tokenised article, as the harness counts them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from torch import nn

from lmforge.errors import LmforgeError
from lmforge.evaluate.perplexity import sliding_nll
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


def run_wikitext(model: nn.Module, tokenizer: Tokenizer, path: str | Path, limit: int | None = None) -> dict:
    """Word perplexity, byte perplexity and bits per byte over the articles of a wiki.*.raw file."""
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"{path}: no such WikiText file (wiki.test.raw of wikitext-2-raw-v1)")
    prefix = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    if prefix is None:
        raise LmforgeError("the tokenizer has neither bos nor eos: nothing to start the first window from")
    pages = wikitext_pages(path.read_text(encoding="utf-8"))[:limit]
    width = model.config.max_seq_len
    loglik = [-sliding_nll(model, [prefix, *tokenizer.encode(detokenize(p))], width, width)[0] for p in pages]
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
