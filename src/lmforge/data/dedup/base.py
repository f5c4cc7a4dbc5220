"""The contract between the executor and a dedup stage.

A dedup stage cannot decide on one document alone. It runs as: ``preparer`` (per shard, fed the documents the
stage sees, in order, while the shard is written) -> ``combine`` tasks (parallel, e.g. one per MinHash band)
-> ``finish`` (one task) -> ``decisions`` (per shard: documents to remove, character spans to cut). Every
phase reads and writes files under one work folder, so phases can run on different machines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.atomic import atomic_file
from lmforge.data.document import Document

ShardReader = Callable[[int], Iterator[Document]]


@dataclass
class Decisions:
    """What a dedup stage does to one shard: drop these document indices, cut these spans from others."""

    remove: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    cuts: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    min_chars_left: int = 0  # a document cut to fewer characters than this is dropped

    def cut(self, text: str, spans: list[tuple[int, int]]) -> str:
        """``text`` without the character ``spans`` (ascending, non-overlapping)."""
        pieces, pos = [], 0
        for start, end in spans:
            pieces.append(text[pos:start])
            pos = end
        pieces.append(text[pos:])
        return "".join(pieces).strip()


class Preparer:
    """Collects per-shard data while the shard's documents stream past; ``close`` writes it."""

    def add(self, doc: Document) -> None:
        """Default: nothing to collect."""

    def close(self) -> None:
        """Default: nothing to write."""


class DedupStage:
    """A stage that decides across shards; ``name`` and ``config_class`` work as for ``Stage``."""

    name = "dedup"
    config_class: type | None = None
    reason = "duplicate"  # the funnel reason for removed documents

    def __init__(self, cfg: Any, work: Path):
        self.cfg, self.work = cfg, work  # work: this stage's folder for its intermediate files

    def preparer(self, shard: int) -> Preparer:
        return Preparer()

    def combine_tasks(self) -> list[Any]:
        return []

    def combine(self, task: Any, shards: list[int]) -> None:
        """Default: no cross-shard step before ``finish``."""

    def finish(self, shards: list[int], read_shard: ShardReader) -> dict[str, Any]:
        raise NotImplementedError

    def decisions(self, shard: int) -> Decisions:
        raise NotImplementedError


def save_atomic(path: Path, array: np.ndarray) -> None:
    """Write an array so that a crash never leaves a half-written file under the final name."""
    with atomic_file(path) as tmp, tmp.open("wb") as f:
        np.save(f, array)


def save_removals(folder: Path, shards: list[int], gids: np.ndarray) -> None:
    """Split global ids (shard << 32 | index) into one ascending index file per shard (empty ones too)."""
    gids = np.sort(gids.astype(np.uint64))
    owner = (gids >> np.uint64(32)).astype(np.int64)
    idx = (gids & np.uint64(0xFFFFFFFF)).astype(np.int64)
    for s in shards:
        lo, hi = np.searchsorted(owner, [s, s + 1])
        save_atomic(folder / f"{s:05d}.npy", idx[lo:hi])


def load_removals(folder: Path, shard: int) -> np.ndarray:
    return np.load(folder / f"{shard:05d}.npy")


def global_ids(shard: int, idx: np.ndarray) -> np.ndarray:
    return (np.uint64(shard) << np.uint64(32)) | idx.astype(np.uint64)
