"""Documents for the tokenizer and the shard builder: plain text, JSONL (optionally .gz or .zst) and Parquet.

A ``.txt`` file is one document; a ``.jsonl`` file holds one document per line in its ``text`` field, a
``.parquet`` file one per row of its ``text`` column (the formats ``lmforge data`` writes). In a folder,
names starting with ``_`` or ``.`` are skipped (``lmforge data`` keeps its work files there), and a
folder that ``lmforge data`` wrote gives its shards only.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from lmforge.errors import LmforgeError

TEXT_SUFFIXES = (".txt", ".md", ".text")
JSONL_SUFFIXES = (".jsonl", ".ndjson")


def _kind(path: Path) -> str | None:
    name = path.name.lower().removesuffix(".gz").removesuffix(".zst")
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(".parquet") and name == path.name.lower():
        return "parquet"
    return None


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(("_", ".")) for part in path.relative_to(root).parts)


def list_inputs(inputs: list[str]) -> list[Path]:
    """Input files from files and folders (searched recursively), sorted so runs are reproducible."""
    files: list[Path] = []
    for spec in inputs:
        p = Path(spec).expanduser()
        if p.is_dir():
            # An `lmforge data` output folder contributes its shards, not its report (summary.md).
            from_data_run = (p / "_work" / "run.json").is_file()
            kinds = ("jsonl", "parquet") if from_data_run else ("text", "jsonl", "parquet")
            found = (f for f in p.rglob("*") if f.is_file() and _kind(f) in kinds and not _hidden(f, p))
            files.extend(sorted(found))
        elif p.is_file():
            if _kind(p) is None:
                raise LmforgeError(
                    f"{p}: unsupported input; expected .txt/.md, .jsonl (optionally .gz or .zst) or .parquet"
                )
            files.append(p)
        else:
            raise LmforgeError(f"{p}: no such file or folder")
    if not files:
        raise LmforgeError(f"no .txt, .jsonl or .parquet input found in {inputs}")
    return files


def _open(path: Path) -> IO[str]:
    from lmforge.data.readers import open_binary  # one place knows compressed files

    return io.TextIOWrapper(open_binary(path), encoding="utf-8-sig")


def _parquet_texts(path: Path, text_key: str) -> Iterator[str]:
    import pyarrow.parquet as pq  # in the `data` extra, which writes these files

    table = pq.ParquetFile(path)
    if text_key not in table.schema_arrow.names:
        raise LmforgeError(f"{path}: no column {text_key!r} (columns: {', '.join(table.schema_arrow.names)})")
    row = 0
    for batch in table.iter_batches(columns=[text_key]):
        for text in batch.column(0).to_pylist():
            if not isinstance(text, str):
                raise LmforgeError(f"{path}: row {row}: {text_key!r} is not a string")
            row += 1
            yield text


def iter_documents(path: Path, text_key: str = "text") -> Iterator[str]:
    """The documents of one input file, in order."""
    if _kind(path) == "parquet":
        yield from _parquet_texts(path, text_key)
        return
    with _open(path) as f:
        if _kind(path) == "text":
            yield f.read()
            return
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise LmforgeError(f"{path}:{n}: not valid JSON ({e})") from None
            text = record.get(text_key) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise LmforgeError(f"{path}:{n}: no string field {text_key!r}")
            yield text


def iter_corpus(files: list[Path], text_key: str = "text") -> Iterator[str]:
    for path in files:
        yield from iter_documents(path, text_key)
