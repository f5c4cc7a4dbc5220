"""Batches from token shards, memory-mapped: the corpus is never loaded into RAM.

Training batches are random windows drawn from an RNG seeded by (seed, step): batch ``step`` is the same
whatever happened before, so the loader's whole state is the step number (resume is exact), and every
rank draws the same global batch and keeps its own slice of rows (data parallelism needs no coordination
and matches one process with the same global batch).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from lmforge.errors import LmforgeError
from lmforge.tokenizer.core import Tokenizer
from lmforge.tokenizer.shards import read_index

SPLIT_TAGS = {"train": 0, "val": 1}


class TokenShards:
    """A shards folder: its index, its tokenizer, and memory maps of its files (opened lazily)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.index = read_index(self.directory)
        self.dtype = np.dtype(self.index["dtype"])
        self._maps: dict[int, np.memmap] = {}

    @property
    def vocab_size(self) -> int:
        return self.index["vocab_size"]

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.load(self.directory)

    def file(self, i: int) -> np.memmap:
        if i not in self._maps:
            name = self.index["files"][i]["name"]
            self._maps[i] = np.memmap(self.directory / name, dtype=self.dtype, mode="r")
        return self._maps[i]

    def ranges(self, split: str) -> list[tuple[int, int, int]]:
        if split not in self.index["splits"]:
            raise LmforgeError(f"{self.directory}: no split {split!r}; has {sorted(self.index['splits'])}")
        return [tuple(r) for r in self.index["splits"][split]]

    def split_tokens(self, split: str) -> int:
        return sum(end - start for _, start, end in self.ranges(split))

    def pieces(self, split: str, seq_len: int) -> list[tuple[int, int, int]]:
        """The split's contiguous stretches long enough for one window of ``seq_len`` + 1 tokens."""
        return [(f, s, e) for f, s, e in self.ranges(split) if e - s > seq_len]


class WindowSampler:
    """Random (input, target) windows of ``seq_len`` tokens from one split; rows are sliced per rank."""

    def __init__(
        self,
        shards: TokenShards,
        split: str,
        seq_len: int,
        global_batch: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        if global_batch % world_size:
            raise LmforgeError(f"global batch {global_batch} is not divisible by {world_size} processes")
        self.shards, self.split, self.seq_len = shards, split, seq_len
        self.global_batch, self.seed, self.rank, self.world_size = global_batch, seed, rank, world_size
        self.pieces = shards.pieces(split, seq_len)
        if not self.pieces:
            raise LmforgeError(
                f"{shards.directory}: the {split} split has no stretch of {seq_len + 1} tokens; "
                "use a shorter sequence length or more data"
            )

    @cached_property
    def _starts_cum(self) -> np.ndarray:
        """Cumulative count of valid window starts per piece."""
        return np.cumsum([e - s - self.seq_len for _, s, e in self.pieces])

    def _window(self, k: int) -> np.ndarray:
        piece = int(np.searchsorted(self._starts_cum, k, side="right"))
        f, start, _ = self.pieces[piece]
        offset = k - (self._starts_cum[piece - 1] if piece else 0)
        pos = start + int(offset)
        return self.shards.file(f)[pos : pos + self.seq_len + 1]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of global batch ``step``: (inputs, targets), each (rows, seq_len) int64."""
        rng = np.random.default_rng([self.seed, SPLIT_TAGS.get(self.split, 2), step])
        ks = rng.integers(0, int(self._starts_cum[-1]), size=self.global_batch)
        rows = self.global_batch // self.world_size
        mine = ks[self.rank * rows : (self.rank + 1) * rows]
        windows = torch.from_numpy(np.stack([self._window(int(k)) for k in mine]).astype(np.int64))
        return windows[:, :-1], windows[:, 1:]


def sequential_windows(
    shards: TokenShards, split: str, seq_len: int, rank: int = 0, world_size: int = 1
) -> Iterator[np.ndarray]:
    """Non-overlapping windows of ``seq_len + 1`` tokens covering a split (every ``world_size``-th one
    for this rank), each window's first token serving only as context; a short tail is dropped."""
    i = 0
    for f, start, end in shards.ranges(split):
        for pos in range(start, end - seq_len, seq_len):
            if i % world_size == rank:
                yield shards.file(f)[pos : pos + seq_len + 1]
            i += 1
