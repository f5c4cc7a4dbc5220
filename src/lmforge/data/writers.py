"""Writers: files of documents as JSONL (plain, gz, zstd) or Parquet, written through ``lmforge.atomic`` so
a crash never leaves a file that looks finished, and the per-stage files of dropped documents."""

from __future__ import annotations

import gzip
import json
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Literal, get_args

from lmforge.atomic import atomic_file
from lmforge.data.document import Document
from lmforge.errors import LmforgeError

OutputFormat = Literal["jsonl", "jsonl.gz", "jsonl.zst", "parquet"]
OUTPUT_FORMATS = get_args(OutputFormat)
COLUMNS = ("text", "id", "url", "metadata")  # Parquet columns; JSONL records may add "html": true


def _open(path: Path, fmt: str, zstd_level: int) -> IO[bytes]:
    if fmt == "jsonl.gz":
        return gzip.open(path, "wb", compresslevel=6)
    if fmt == "jsonl.zst":
        import zstandard

        # frame checksums: a reader can tell damage from data (readers.py checks them)
        return zstandard.ZstdCompressor(level=zstd_level, write_checksum=True).stream_writer(open(path, "wb"))
    return open(path, "wb")


class DocumentWriter:
    """Writes one file of documents; use as a context manager. ``path`` appears only after a clean exit.

    ``fields`` names string fields that every ``write`` adds beside the document's own (Parquet needs them
    up front for its schema).
    """

    def __init__(self, path: Path, fmt: str, fields: tuple[str, ...] = (), zstd_level: int = 3):
        if fmt not in OUTPUT_FORMATS:
            raise LmforgeError(f"output format {fmt!r} is not one of {', '.join(OUTPUT_FORMATS)}")
        self.path, self.fmt, self.fields, self.level = path, fmt, fields, zstd_level
        self.count = 0

    def __enter__(self) -> DocumentWriter:
        with ExitStack() as stack:
            tmp = stack.enter_context(atomic_file(self.path))  # exits last: renames or deletes
            if self.fmt == "parquet":
                self.rows: list[dict[str, str]] = []

                def flush(exc_type: type[BaseException] | None, *_: object) -> None:
                    if exc_type is None:  # the table goes into the temporary before it is renamed
                        self._write_parquet(tmp)

                stack.push(flush)
            else:
                self.file = stack.enter_context(_open(tmp, self.fmt, self.level))
            self._stack = stack.pop_all()
        return self

    def write(self, doc: Document, **fields: str) -> None:
        self.count += 1
        rec = {**doc.to_record(), **fields}
        if self.fmt == "parquet":
            rec["metadata"] = json.dumps(rec["metadata"], ensure_ascii=False)
            self.rows.append(rec)
        else:
            self.file.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8", "surrogatepass"))

    def _write_parquet(self, tmp: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([(k, pa.string()) for k in (*COLUMNS, *self.fields)])
        table = pa.Table.from_pylist(self.rows, schema=schema)
        pq.write_table(table, tmp, compression="zstd", write_page_checksum=True)  # checked when read

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stack.__exit__(exc_type, exc, tb)


class DroppedWriter:
    """The documents one shard's stages drop, each with its stage and reason, in one file per stage:
    ``folder/NN_stage/SHARD.fmt`` (NN: the stage's row in the report). A file is opened on its stage's first
    drop and, like the shard, renamed into place only when the whole shard has run."""

    def __init__(self, folder: Path, stages: dict[int, str], shard: int, fmt: str):
        self.stages, self.fmt = stages, fmt
        self.paths = {
            pos: shard_path(folder / f"{pos:02d}_{name}", shard, fmt) for pos, name in stages.items()
        }
        self.writers: dict[int, DocumentWriter] = {}

    def __enter__(self) -> DroppedWriter:
        for path in self.paths.values():  # an unfinished earlier attempt may have renamed some into place
            path.unlink(missing_ok=True)
        self._stack = ExitStack()
        return self

    def write(self, pos: int, doc: Document, reason: str) -> None:
        writer = self.writers.get(pos)
        if writer is None:
            writer = DocumentWriter(self.paths[pos], self.fmt, fields=("stage", "reason"))
            self.writers[pos] = self._stack.enter_context(writer)
        writer.write(doc, stage=self.stages[pos], reason=reason)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stack.__exit__(exc_type, exc, tb)


def shard_path(folder: Path, shard: int, fmt: str) -> Path:
    return folder / f"{shard:05d}.{fmt}"
