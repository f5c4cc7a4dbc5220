"""Documents for the tokenizer and the shard builder: plain text files and JSONL, optionally gzipped.

A ``.txt`` file is one document; a ``.jsonl`` file holds one document per line in its ``text`` field
(the format ``lmforge data`` writes).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from lmforge.errors import LmforgeError

TEXT_SUFFIXES = (".txt", ".md", ".text")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


def _kind(path: Path) -> str | None:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    return None


def list_inputs(inputs: list[str]) -> list[Path]:
    """Input files from files and folders (searched recursively), sorted so runs are reproducible."""
    files: list[Path] = []
    for spec in inputs:
        p = Path(spec).expanduser()
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file() and _kind(f)))
        elif p.is_file():
            if _kind(p) is None:
                raise LmforgeError(f"{p}: unsupported input; expected .txt/.md or .jsonl (optionally .gz)")
            files.append(p)
        else:
            raise LmforgeError(f"{p}: no such file or folder")
    if not files:
        raise LmforgeError(f"no .txt or .jsonl input found in {inputs}")
    return files


def _open(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig")
    return path.open("r", encoding="utf-8-sig")


def iter_documents(path: Path, text_key: str = "text") -> Iterator[str]:
    """The documents of one input file, in order."""
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
