"""Token shards: a corpus tokenized once into flat binary files that training memory-maps.

This module writes them (``build_shards``) and reads them (``TokenShards``, memory maps: the corpus is
never loaded into RAM), so the format lives in one place.

Layout of a shards folder::

    index.json                  dtype, vocab size, files, and the train/val token ranges
    shard_00000.bin ...         token ids, native-endian uint16 (vocab <= 65536) or uint32
    tokenizer.json (+ config)   the tokenizer that produced them

Each document is followed by the tokenizer's eos token, so a window that spans two documents sees the
boundary. The validation split is the last ``val_fraction`` of the token stream, cut at a document
boundary when there is one near the target (a single long text, e.g. one book, is cut exactly: its
first 90 % trains, its last 10 % validates).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.tokenizer.core import Tokenizer

INDEX = "index.json"
FORMAT = "lmforge-shards"
BATCH_CHARS = 1 << 20  # documents are sent to workers in batches of about this many characters
MIN_VAL_TOKENS = 4 * 1024 + 1  # below this, a val split is warned about: a few windows of 1024 at least


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned type that holds every id."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _batches(docs: Iterable[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for doc in docs:
        batch.append(doc)
        size += len(doc)
        if size >= BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer_dir: str) -> None:
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # parallelism comes from the processes
    _worker_tokenizer = Tokenizer.load(tokenizer_dir)


def separator_id(tokenizer: Tokenizer) -> int | None:
    """What ends each document in the shards: eos for decoders' tokenizers, [SEP] for BERT's."""
    return tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.sep_id


def _encode(tokenizer: Tokenizer, docs: list[str], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated ids (each document + its separator) and each document's length including it."""
    eos = separator_id(tokenizer)
    encoded = tokenizer.encode_batch(docs)
    lengths = np.fromiter((len(ids) + 1 for ids in encoded), dtype=np.int64, count=len(encoded))
    flat = np.fromiter((t for ids in encoded for t in (*ids, eos)), dtype=dtype, count=int(lengths.sum()))
    return flat, lengths


def _encode_in_worker(args: tuple[list[str], str]) -> tuple[np.ndarray, np.ndarray]:
    docs, dtype = args
    assert _worker_tokenizer is not None
    return _encode(_worker_tokenizer, docs, np.dtype(dtype))


@dataclass
class ShardWriter:
    """Appends token arrays, starting a new file every ``shard_tokens`` tokens."""

    folder: Path
    shard_tokens: int

    def __post_init__(self) -> None:
        self.files: list[dict] = []
        self._handle = None

    def write(self, tokens: np.ndarray) -> None:
        while len(tokens):
            if self._handle is None or self.files[-1]["tokens"] >= self.shard_tokens:
                self._next_file()
            room = self.shard_tokens - self.files[-1]["tokens"]
            part, tokens = tokens[:room], tokens[room:]
            self._handle.write(part.tobytes())
            self.files[-1]["tokens"] += len(part)

    def _next_file(self) -> None:
        self.close()
        name = f"shard_{len(self.files):05d}.bin"
        self._handle = (self.folder / name).open("wb")
        self.files.append({"name": name, "tokens": 0})

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def split_point(doc_ends: np.ndarray, total: int, val_fraction: float) -> int:
    """Token offset where validation starts: the first document boundary at or after the target,
    unless that would leave validation less than half its intended size (then exactly the target)."""
    if val_fraction <= 0:
        return total
    target = total - max(1, round(total * val_fraction))
    after = doc_ends[doc_ends >= target]
    if len(after) and total - after[0] >= (total - target) / 2:
        return int(after[0])
    return target


def _ranges(files: list[dict], lo: int, hi: int) -> list[list[int]]:
    """[file index, start, end] pieces of the global token interval [lo, hi)."""
    out, offset = [], 0
    for i, f in enumerate(files):
        start, end = max(lo, offset), min(hi, offset + f["tokens"])
        if start < end:
            out.append([i, start - offset, end - offset])
        offset += f["tokens"]
    return out


def build_shards(
    documents: Iterable[str],
    tokenizer: Tokenizer,
    out_dir: str | Path,
    val_fraction: float = 0.005,
    workers: int = 1,
    shard_tokens: int = 1 << 27,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Tokenize ``documents`` into a shards folder (written atomically; a folder holding files lmforge
    did not write is refused unless ``overwrite``); returns its index."""
    from tqdm import tqdm

    from lmforge.atomic import atomic_directory

    if separator_id(tokenizer) is None:
        raise LmforgeError("the tokenizer has no eos (or [SEP]) token; shards need one to separate documents")
    if not 0 <= val_fraction < 1:
        raise LmforgeError(f"val_fraction must be in [0, 1), got {val_fraction}")
    dtype = token_dtype(tokenizer.vocab_size)
    bar = tqdm(desc="tokenizing", unit=" tok", unit_scale=True, disable=not progress)
    doc_ends: list[np.ndarray] = []
    total = 0
    with atomic_directory(out_dir, overwrite) as tmp:
        tokenizer.save(tmp)
        writer = ShardWriter(tmp, shard_tokens)
        pool = None
        if workers > 1:
            # Not fork: a process with threads (tokenizers', torch's) can deadlock its forked children.
            method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
            pool = mp.get_context(method).Pool(workers, _init_worker, (str(tmp),))
            results = pool.imap(_encode_in_worker, ((b, dtype.str) for b in _batches(documents)))
        else:
            results = (_encode(tokenizer, b, dtype) for b in _batches(documents))
        try:
            for flat, lengths in results:
                writer.write(flat)
                doc_ends.append(total + np.cumsum(lengths))
                total += len(flat)
                bar.update(len(flat))
        finally:
            writer.close()
            bar.close()
            if pool is not None:
                pool.terminate()
        if total == 0:
            raise LmforgeError("the input holds no documents")
        ends = np.concatenate(doc_ends)
        cut = split_point(ends, total, val_fraction)
        index = {
            "format": FORMAT,
            "dtype": dtype.name,
            "vocab_size": tokenizer.vocab_size,
            "tokenizer_fingerprint": tokenizer.fingerprint(),
            "eos_id": separator_id(tokenizer),  # the document separator
            "documents": len(ends),
            "tokens": total,
            "files": writer.files,
            "splits": {"train": _ranges(writer.files, 0, cut), "val": _ranges(writer.files, cut, total)},
        }
        (tmp / INDEX).write_text(json.dumps(index, indent=1), encoding="utf-8")
    val = total - cut
    if val_fraction and val < MIN_VAL_TOKENS:
        print(
            f"warning: the val split holds {val:,} tokens, fewer than {MIN_VAL_TOKENS:,} (four windows of "
            "1024): training at longer contexts will have no validation; raise --val-fraction",
            file=sys.stderr,
        )
    return index


def read_index(shards_dir: str | Path) -> dict:
    path = Path(shards_dir) / INDEX
    if not path.is_file():
        raise LmforgeError(f"{shards_dir}: not a shards folder (no {INDEX}); build one with `lmforge shards`")
    index = json.loads(path.read_text(encoding="utf-8"))
    if index.get("format") != FORMAT:
        raise LmforgeError(f"{path}: not an lmforge shards index")
    return index


# --------------------------------------------------------------------------------------------------
# Reading


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

    def check_tokenizer(self, tokenizer: Tokenizer, whose: str) -> None:
        """Refuse ids made by another tokenizer than ``tokenizer`` (scores on them are meaningless)."""
        made_by = self.index.get("tokenizer_fingerprint") or self.tokenizer().fingerprint()
        if made_by != tokenizer.fingerprint():
            raise LmforgeError(
                f"{self.directory} was tokenized with another tokenizer than {whose}'s "
                f"(fingerprints {made_by} vs {tokenizer.fingerprint()}): re-shard the text with "
                f"{whose}'s tokenizer"
            )

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
