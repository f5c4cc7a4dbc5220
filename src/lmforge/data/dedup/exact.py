"""Whole-document exact dedup: a 64-bit hash of the text per document; the first copy in input order stays."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

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
from lmforge.data.document import Document

NO_KEY = 0  # the hash of an empty value; real hashes that happen to be 0 are stored as 1


@dataclass
class ExactDedupConfig:
    field: Literal["text", "url"] = "text"  # "url" for URL dedup


class _HashPreparer(Preparer):
    def __init__(self, stage: ExactDedup, shard: int):
        self.stage, self.shard, self.hashes = stage, shard, []

    def add(self, doc: Document) -> None:
        value = doc.text if self.stage.cfg.field == "text" else doc.url.lower()
        if not value:  # no URL (e.g. a local HTML file): nothing to compare, never a duplicate
            self.hashes.append(NO_KEY)
            return
        digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        self.hashes.append(int.from_bytes(digest, "little") or 1)

    def close(self) -> None:
        save_atomic(
            self.stage.work / "hash" / f"{self.shard:05d}.npy", np.array(self.hashes, dtype=np.uint64)
        )


class ExactDedup(DedupStage):
    name = "exact_dedup"
    config_class = ExactDedupConfig

    def preparer(self, shard: int) -> Preparer:
        return _HashPreparer(self, shard)

    def finish(self, shards: list[int], read_shard: ShardReader) -> dict[str, Any]:
        hashes, gids = [], []
        for s in shards:
            h = np.load(self.work / "hash" / f"{s:05d}.npy")
            hashes.append(h)
            gids.append(global_ids(s, np.arange(h.size)))
        h = np.concatenate(hashes) if hashes else np.empty(0, dtype=np.uint64)
        g = np.concatenate(gids) if gids else np.empty(0, dtype=np.uint64)
        order = np.lexsort((g, h))
        dup = np.zeros(order.size, dtype=bool)
        hs = h[order]
        dup[1:] = (hs[1:] == hs[:-1]) & (hs[1:] != NO_KEY)
        save_removals(self.work / "remove", shards, g[order][dup])
        return {"removed": int(dup.sum())}

    def decisions(self, shard: int) -> Decisions:
        return Decisions(remove=load_removals(self.work / "remove", shard))
