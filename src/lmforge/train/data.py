"""Training batches from token shards (memory-mapped by ``tokenizer.shards.TokenShards``).

Training batches are random windows drawn from an RNG seeded by (seed, step): batch ``step`` is the same
whatever happened before, so the loader's whole state is the step number (resume is exact), and every
rank draws the same global batch and keeps its own slice of rows (data parallelism needs no coordination
and matches one process with the same global batch).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from lmforge.errors import LmforgeError
from lmforge.tokenizer.shards import TokenShards

SPLIT_TAGS = {"train": 0, "val": 1}


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

    @property
    def starts(self) -> int:
        """How many windows the split holds (window k for k in range(starts))."""
        return int(self._starts_cum[-1])

    def window(self, k: int) -> np.ndarray:
        """Window ``k``: ``seq_len + 1`` consecutive tokens of the split."""
        piece = int(np.searchsorted(self._starts_cum, k, side="right"))
        f, start, _ = self.pieces[piece]
        offset = k - (self._starts_cum[piece - 1] if piece else 0)
        pos = start + int(offset)
        return self.shards.file(f)[pos : pos + self.seq_len + 1]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of global batch ``step``: (inputs, targets), each (rows, seq_len) int64."""
        rng = np.random.default_rng([self.seed, SPLIT_TAGS.get(self.split, 2), step])
        ks = rng.integers(0, self.starts, size=self.global_batch)
        rows = self.global_batch // self.world_size
        mine = ks[self.rank * rows : (self.rank + 1) * rows]
        windows = torch.from_numpy(np.stack([self.window(int(k)) for k in mine]).astype(np.int64))
        return windows[:, :-1], windows[:, 1:]
