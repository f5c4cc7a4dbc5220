"""Writers: sharded JSONL (plain, gz, zstd) or Parquet, each written under a temporary name and renamed
when complete, so a crash never leaves a shard that looks finished."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Literal, get_args

from lmforge.data.document import Document
from lmforge.errors import LmforgeError

OutputFormat = Literal["jsonl", "jsonl.gz", "jsonl.zst", "parquet"]
OUTPUT_FORMATS = get_args(OutputFormat)


class ShardWriter:
    """Writes one shard; use as a context manager. ``path`` appears only after a clean exit."""

    def __init__(self, path: Path, fmt: str, zstd_level: int = 3):
        if fmt not in OUTPUT_FORMATS:
            raise LmforgeError(f"output format {fmt!r} is not one of {', '.join(OUTPUT_FORMATS)}")
        self.path, self.fmt, self.level = path, fmt, zstd_level
        self.tmp = path.with_name(path.name + ".tmp")
        self.rows: list[dict] = []
        self.count = 0

    def __enter__(self) -> ShardWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.fmt == "jsonl":
            self.f = open(self.tmp, "wb")
        elif self.fmt == "jsonl.gz":
            self.f = gzip.open(self.tmp, "wb", compresslevel=6)
        elif self.fmt == "jsonl.zst":
            import zstandard

            self.f = zstandard.ZstdCompressor(level=self.level).stream_writer(open(self.tmp, "wb"))
        return self

    def write(self, doc: Document) -> None:
        self.count += 1
        if self.fmt == "parquet":
            rec = doc.to_record()
            rec["metadata"] = json.dumps(rec["metadata"], ensure_ascii=False)
            self.rows.append(rec)
        else:
            line = json.dumps(doc.to_record(), ensure_ascii=False) + "\n"
            self.f.write(line.encode("utf-8", "surrogatepass"))

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.fmt == "parquet":
            if exc_type is None:
                import pyarrow as pa
                import pyarrow.parquet as pq

                schema = pa.schema([(k, pa.string()) for k in ("text", "id", "url", "metadata")])
                pq.write_table(pa.Table.from_pylist(self.rows, schema=schema), self.tmp, compression="zstd")
        else:
            self.f.close()
        if exc_type is None:
            self.tmp.replace(self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def shard_path(folder: Path, shard: int, fmt: str) -> Path:
    return folder / f"{shard:05d}.{fmt}"
