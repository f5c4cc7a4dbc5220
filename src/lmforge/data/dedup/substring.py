"""Exact-substring dedup, RefinedWeb's ExactSubstr-CUT (Lee et al. 2022; spec §11), for corpora in RAM.

All documents become one token stream (normalised words, each document closed by its own unique separator
so no match crosses documents). A suffix array built by prefix doubling (numpy ``lexsort`` rounds), and the
longest common prefix of neighbouring suffixes from the same rank tables by binary lifting, find every span of
at least ``min_tokens`` tokens that occurs twice. All copies are cut (CUT keeps none), by character offsets in
the original text; documents left with fewer than ``min_chars_left`` characters are dropped.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import Any

import numpy as np
import regex

from lmforge.atomic import atomic_file
from lmforge.data.dedup.base import Decisions, DedupStage, ShardReader

_WORD_RE = regex.compile(r"\w+")


@dataclass
class ExactSubstringConfig:
    min_tokens: int = 50
    min_chars_left: int = 20


def suffix_array(seq: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Suffix array of ``seq`` and the rank table of every doubling level (level j ranks prefixes of 2**j)."""
    n = seq.size
    rank = np.unique(seq, return_inverse=True)[1].astype(np.int64)
    levels = [rank]
    order = np.argsort(rank, kind="stable")
    k = 1
    while n and rank.max() < n - 1 and k < n:
        second = np.full(n, -1, dtype=np.int64)
        second[: n - k] = rank[k:]
        order = np.lexsort((second, rank))
        r1, r2 = rank[order], second[order]
        step = np.empty(n, dtype=np.int64)
        step[0] = 0
        step[1:] = (r1[1:] != r1[:-1]) | (r2[1:] != r2[:-1])
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.cumsum(step)
        levels.append(rank)
        k *= 2
    return order, levels


def adjacent_lcp(sa: np.ndarray, levels: list[np.ndarray]) -> np.ndarray:
    """Longest common prefix of each suffix with the next one in suffix-array order."""
    n = sa.size
    a, b = sa[:-1], sa[1:]
    lcp = np.zeros(a.size, dtype=np.int64)
    for j in range(len(levels) - 1, -1, -1):
        ia, ib = a + lcp, b + lcp
        ok = (ia < n) & (ib < n)
        eq = np.zeros(a.size, dtype=bool)
        eq[ok] = levels[j][ia[ok]] == levels[j][ib[ok]]
        lcp[eq] += 1 << j
    return lcp


def repeated_mask(seq: np.ndarray, min_len: int) -> np.ndarray:
    """True for every position covered by a span of >= ``min_len`` elements that occurs at least twice."""
    if seq.size < 2:
        return np.zeros(seq.size, dtype=bool)
    sa, levels = suffix_array(seq)
    lcp = adjacent_lcp(sa, levels)
    hit = np.flatnonzero(lcp >= min_len)
    starts = np.concatenate((sa[hit], sa[hit + 1]))
    lengths = np.concatenate((lcp[hit], lcp[hit]))
    diff = np.zeros(seq.size + 1, dtype=np.int64)
    np.add.at(diff, starts, 1)
    np.add.at(diff, starts + lengths, -1)
    return np.cumsum(diff[:-1]) > 0


def _norm_token(t: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", t.lower()) if not unicodedata.combining(c))


class ExactSubstring(DedupStage):
    name = "exact_substring"
    config_class = ExactSubstringConfig
    reason = "too_short_after_cut"

    def finish(self, shards: list[int], read_shard: ShardReader) -> dict[str, Any]:
        tokens: list[str] = []
        spans: list[tuple[int, int]] = []
        doc_of: list[tuple[int, int, int]] = []  # (shard, index, number of tokens)
        for s in shards:
            for i, doc in enumerate(read_shard(s)):
                found = [(m.group(), m.span()) for m in _WORD_RE.finditer(doc.text)]
                tokens.extend(t for t, _ in found)
                spans.extend(sp for _, sp in found)
                doc_of.append((s, i, len(found)))
        # Normalise each distinct word once, not each occurrence, then map occurrences through.
        raw_vocab, raw_ids = np.unique(np.array(tokens, dtype=str), return_inverse=True)
        normalised = np.array([_norm_token(t) for t in raw_vocab], dtype=str)
        vocab, norm_ids = np.unique(normalised, return_inverse=True)
        ids = norm_ids[raw_ids]
        counts = np.array([c for _, _, c in doc_of], dtype=np.int64)
        # each document is followed by a separator id of its own
        seq = np.empty(ids.size + counts.size, dtype=np.int64)
        ends = np.cumsum(counts + 1) - 1
        is_sep = np.zeros(seq.size, dtype=bool)
        is_sep[ends] = True
        seq[is_sep] = vocab.size + np.arange(counts.size)
        seq[~is_sep] = ids
        covered = repeated_mask(seq, self.cfg.min_tokens)[~is_sep]
        span_arr = np.array(spans, dtype=np.int64).reshape(-1, 2)
        cuts: dict[int, dict[str, list[list[int]]]] = {s: {} for s in shards}
        offset = cut_docs = 0
        for s, i, c in doc_of:
            cov = covered[offset : offset + c]
            if cov.any():
                edges = np.diff(np.concatenate(([0], cov.astype(np.int8), [0])))
                run_starts, run_ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
                sp = span_arr[offset : offset + c]
                cuts[s][str(i)] = np.stack([sp[run_starts, 0], sp[run_ends, 1]], axis=1).tolist()
                cut_docs += 1
            offset += c
        for s in shards:
            with atomic_file(self.work / "cuts" / f"{s:05d}.json") as tmp:
                tmp.write_text(json.dumps(cuts[s]), encoding="utf-8")
        return {"docs_with_cuts": cut_docs, "tokens_cut": int(covered.sum()), "tokens": int(covered.size)}

    def decisions(self, shard: int) -> Decisions:
        raw = json.loads((self.work / "cuts" / f"{shard:05d}.json").read_text(encoding="utf-8"))
        cuts = {int(k): [tuple(x) for x in v] for k, v in raw.items()}
        return Decisions(cuts=cuts, min_chars_left=self.cfg.min_chars_left)
