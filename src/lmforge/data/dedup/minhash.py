"""MinHash LSH fuzzy dedup that scales past RAM and across machines (spec §10).

Phases, meeting in files under the work folder:

1. per shard: word 5-gram shingles of the normalised text -> signatures -> one 64-bit key per band; for each
   band the keys are sorted and written with their document index (``sig/{shard}.keys.npy`` / ``.docs.npy``,
   one row per band, memory-mappable);
2. per band (and optionally per key range of a band): merge the shards' sorted rows, and every two neighbours
   with equal keys become a duplicate pair (``pairs/{band}_{range}.npy``);
3. one task: union-find over all pairs -> clusters; the survivor of a cluster is the member with the lowest
   seeded hash of its id (RefinedWeb keeps a random member; this is random but reproducible and independent of
   worker count); every other member goes to ``remove/{shard}.npy``;
4. per shard: the next stage drops the listed documents.

A band's rows are read with ``mmap`` and ``searchsorted``, so a band task only holds its slice of the keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.data.dedup.base import (
    Decisions,
    DedupStage,
    Preparer,
    ShardReader,
    global_ids,
    load_removals,
    save_atomic,
    save_removals,
)
from lmforge.data.dedup.hashing import band_keys, batch_ngram_hashes, mix64, permutations, signatures
from lmforge.data.dedup.unionfind import components
from lmforge.data.document import Document
from lmforge.data.text import normalize_for_dedup


@dataclass
class MinHashConfig:
    n_gram: int = 5
    bands: int = 14  # FineWeb: 14 x 8; RefinedWeb: 450 x 20
    rows: int = 8
    seed: int = 1
    ranges_per_band: int = 1  # split each band's key space over this many tasks (memory per task / this)
    batch_chars: int = 1 << 22  # normalised characters hashed per vectorised batch


class _SigPreparer(Preparer):
    def __init__(self, stage: MinHash, shard: int):
        self.stage, self.shard = stage, shard
        self.pending: list[str] = []
        self.pending_chars = 0
        self.keys: list[np.ndarray] = []
        self.has: list[np.ndarray] = []

    def add(self, doc: Document) -> None:
        norm = normalize_for_dedup(doc.text)
        self.pending.append(norm)
        self.pending_chars += len(norm)
        if self.pending_chars >= self.stage.cfg.batch_chars:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            hashes, counts = batch_ngram_hashes(self.pending, self.stage.cfg.n_gram)
            sig = signatures(hashes, counts, self.stage.perms)
            self.keys.append(band_keys(sig, self.stage.cfg.bands, self.stage.cfg.rows))
            self.has.append(counts > 0)
        self.pending, self.pending_chars = [], 0

    def close(self) -> None:
        self._flush()
        bands = self.stage.cfg.bands
        keys = np.concatenate(self.keys) if self.keys else np.empty((0, bands), dtype=np.uint64)
        docs = np.flatnonzero(np.concatenate(self.has) if self.has else np.empty(0, bool)).astype(np.uint32)
        keys = np.ascontiguousarray(keys[docs].T)  # band-major; documents without shingles left out
        order = np.argsort(keys, axis=1, kind="stable")
        base = self.stage.work / "sig" / f"{self.shard:05d}"
        save_atomic(base.with_suffix(".docs.npy"), docs[order])
        save_atomic(base.with_suffix(".keys.npy"), np.take_along_axis(keys, order, axis=1))


class MinHash(DedupStage):
    name = "minhash"
    config_class = MinHashConfig
    reason = "near_duplicate"

    def __init__(self, cfg: MinHashConfig, work: Path):
        super().__init__(cfg, work)
        self.perms = permutations(cfg.bands * cfg.rows, cfg.seed)

    def preparer(self, shard: int) -> Preparer:
        return _SigPreparer(self, shard)

    def combine_tasks(self) -> list[Any]:
        return [(b, r) for b in range(self.cfg.bands) for r in range(self.cfg.ranges_per_band)]

    def _key_range(self, r: int) -> tuple[int, int | None]:
        step = 2**64 // self.cfg.ranges_per_band
        return r * step, (None if r == self.cfg.ranges_per_band - 1 else (r + 1) * step)

    def combine(self, task: tuple[int, int], shards: list[int]) -> None:
        band, r = task
        lo, hi = self._key_range(r)
        keys, gids = [], []
        for s in shards:
            row = np.load(self.work / "sig" / f"{s:05d}.keys.npy", mmap_mode="r")[band]
            i0 = int(np.searchsorted(row, np.uint64(lo)))
            i1 = len(row) if hi is None else int(np.searchsorted(row, np.uint64(hi)))
            docs = np.load(self.work / "sig" / f"{s:05d}.docs.npy", mmap_mode="r")[band, i0:i1]
            keys.append(np.asarray(row[i0:i1]))
            gids.append(global_ids(s, np.asarray(docs)))
        key = np.concatenate(keys) if keys else np.empty(0, dtype=np.uint64)
        gid = np.concatenate(gids) if gids else np.empty(0, dtype=np.uint64)
        order = np.lexsort((gid, key))
        key, gid = key[order], gid[order]
        same = np.flatnonzero(key[1:] == key[:-1])
        save_atomic(
            self.work / "pairs" / f"{band:03d}_{r:03d}.npy", np.stack([gid[same], gid[same + 1]], axis=1)
        )

    def finish(self, shards: list[int], read_shard: ShardReader) -> dict[str, Any]:
        files = sorted((self.work / "pairs").glob("*.npy"))
        pairs = np.concatenate([np.load(f) for f in files]) if files else np.empty((0, 2), dtype=np.uint64)
        nodes, inverse = np.unique(pairs, return_inverse=True)
        inverse = inverse.reshape(-1, 2)
        root = components(inverse[:, 0], inverse[:, 1], nodes.size)
        priority = mix64(nodes ^ mix64(np.full(nodes.size, self.cfg.seed, dtype=np.uint64)))
        order = np.lexsort((priority, root))  # by cluster, then by priority: the first of each is kept
        first = np.ones(order.size, dtype=bool)
        first[1:] = root[order][1:] != root[order][:-1]
        save_removals(self.work / "remove", shards, nodes[order[~first]])
        return {"clusters": int(first.sum()), "removed": int((~first).sum()), "pairs": int(pairs.shape[0])}

    def decisions(self, shard: int) -> Decisions:
        return Decisions(remove=load_removals(self.work / "remove", shard))
