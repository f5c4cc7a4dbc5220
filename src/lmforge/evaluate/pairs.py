"""(source, target) pairs for translation and summarization, read from the usual file layouts:

- JSON lines, plain or .gz, with the two texts in fields named by ``src``/``tgt`` (``de``/``en``,
  ``dialogue``/``summary``), or nested HF-datasets style ``{"translation": {"de": ..., "en": ...}}``;
- TSV, plain or .gz, without a header: ``columns`` names the columns (default ``[src, tgt]``; columns
  past the named ones are ignored, e.g. Tatoeba's attribution);
- a prefix: ``PATH.{src}`` and ``PATH.{tgt}`` (each plain or .gz), one text per line, aligned by line
  number (Multi30k's ``train.de.gz`` + ``train.en.gz`` is ``train`` with src=de, tgt=en).

``tgt`` may name several fields: each pair then has all of them as references, the first as its target
(DialogSum test: ``tgt=["summary1", "summary2", "summary3"]``). ``where`` keeps only the records whose
field has the given value: WMT22's ``general-test.jsonl.gz`` is read with ``src="src"``, ``tgt="tgr"``
(sic), ``where={"type": "de2en"}``.

Texts lose their surrounding whitespace. A pair whose source or a reference is empty is skipped and
counted (reported on stderr at the end, naming the first places), never used; a malformed record is an
error naming file:line and the field. There is no official split for some corpora (Tatoeba), so
:func:`split_pairs` makes a seeded one that keeps every copy of a source on one side.
"""

from __future__ import annotations

import gzip
import random
import sys
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

from lmforge.errors import LmforgeError
from lmforge.evaluate.classify import json_records
from lmforge.tokenizer.sources import ReadLog

T = TypeVar("T")
Record = tuple[str, dict[str, Any]]  # (file:line, {field: value})


@dataclass(frozen=True)
class Pair:
    source: str
    target: str  # the first reference
    references: tuple[str, ...]  # every reference, the target first
    origin: str  # file:line, for messages


def _open_lines(path: Path) -> TextIO:
    """A text file (gzip by its .gz name) split on \\n only: a stray \\r inside a line of a
    line-aligned file must not shift every later line."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="\n")
    return path.open(encoding="utf-8-sig", newline="\n")


def _tsv_records(path: Path, columns: Sequence[str]) -> Iterator[Record]:
    """Tab-split lines, no quoting (texts may hold bare quotes); a blank line is a record of empty
    texts, so that it is counted as skipped."""
    with _open_lines(path) as f:
        for line_no, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            values = line.split("\t") if line.strip() else [""] * len(columns)
            yield f"{path}:{line_no}", dict(zip(columns, values))


def _line_file(prefix: Path, name: str) -> Path | None:
    return next((p for p in (Path(f"{prefix}.{name}"), Path(f"{prefix}.{name}.gz")) if p.is_file()), None)


def _prefix_records(prefix: Path, names: Sequence[str]) -> Iterator[Record]:
    """Line n of every ``PREFIX.{name}`` file as one record; the files must have as many lines."""
    files = {name: _line_file(prefix, name) for name in names}
    missing = [f"{prefix}.{name}[.gz]" for name, p in files.items() if p is None]
    if missing:
        raise LmforgeError(f"{prefix}: no such file, nor the line-aligned files {', '.join(missing)}")
    lines = {}
    for name, p in files.items():
        with _open_lines(p) as f:
            lines[name] = [line.rstrip("\r\n") for line in f]
    counts = {len(texts) for texts in lines.values()}
    if len(counts) > 1:
        sizes = ", ".join(f"{files[name]} has {len(texts):,}" for name, texts in lines.items())
        raise LmforgeError(f"line-aligned files differ in length: {sizes} lines")
    where = f"{prefix}.{{{','.join(names)}}}"
    for i, texts in enumerate(zip(*lines.values())):
        yield f"{where}:{i + 1}", dict(zip(names, texts))


def _records(
    path: Path, names: Sequence[str], columns: Sequence[str] | None, filters: Sequence[str]
) -> Iterator[Record]:
    """The records of a .jsonl or .tsv file (plain or .gz), else of the prefix form."""
    if not path.is_file():
        if filters:
            raise LmforgeError(f"{path}: 'where' needs a JSONL or TSV file, line files have no other fields")
        return _prefix_records(path, names)
    kind = path.name.removesuffix(".gz").rsplit(".", 1)[-1].lower()
    if kind == "jsonl":
        return ((f"{path}:{line}", record) for line, record in json_records(path))
    if kind == "tsv":
        columns = list(columns or names)
        absent = [name for name in [*names, *filters] if name not in columns]
        if absent:
            raise LmforgeError(f"{path}: fields {absent} are not among the TSV columns {columns}")
        return _tsv_records(path, columns)
    raise LmforgeError(f"{path}: expected a .jsonl or .tsv file (optionally .gz), or a prefix of line files")


def _text(record: dict[str, Any], name: str, at: str) -> str:
    """Field ``name`` of a record, or of its HF-style ``translation`` dict."""
    nested = record.get("translation")
    if name not in record and isinstance(nested, dict):
        record = nested
    if name not in record:
        raise LmforgeError(f"{at}: field {name!r}: missing (the record has {', '.join(record) or 'none'})")
    value = record[name]
    if not isinstance(value, str):
        raise LmforgeError(f"{at}: field {name!r}: expected a string, got {value!r}")
    return value.strip()


def read_pairs(
    path: str | Path,
    src: str,
    tgt: str | Sequence[str],
    columns: Sequence[str] | None = None,
    where: Mapping[str, str] | None = None,
    log: ReadLog | None = None,
) -> list[Pair]:
    """The pairs of a JSONL or TSV file or a prefix of line-aligned files (see the module's doc), in file
    order. Empty texts are counted in ``log`` and reported on stderr; no pair at all is an error."""
    p = Path(path)
    targets = [tgt] if isinstance(tgt, str) else list(tgt)
    if not targets:
        raise LmforgeError("tgt: name at least one target field")
    where = dict(where or {})
    log = log if log is not None else ReadLog()
    names = [src, *targets]
    records = _records(p, names, columns, list(where))
    pairs = []
    for at, record in records:
        if any(_text(record, field, at) != value for field, value in where.items()):
            continue
        texts = [_text(record, name, at) for name in names]
        empty = next((name for name, text in zip(names, texts) if not text), None)
        if empty is not None:
            log.skip(f"empty {empty!r}", at)
            continue
        pairs.append(Pair(texts[0], texts[1], tuple(texts[1:]), at))
    log.files += 1 if p.is_file() else len(names)
    log.documents += len(pairs)
    if not pairs:
        kept = f" with {', '.join(f'{k}={v}' for k, v in where.items())}" if where else ""
        raise LmforgeError(f"{p}: no pairs{kept} ({log.report()})")
    if log.skipped:
        print(f"{p}: {log.report()}", file=sys.stderr)
    return pairs


def split_pairs(
    pairs: Sequence[T],
    test_fraction: float | None = None,
    test_size: int | None = None,
    seed: int = 0,
    key: Callable[[T], Hashable] = lambda p: p.source,
) -> tuple[list[T], list[T]]:
    """(train, test): a seeded split that keeps every item with the same ``key`` on one side, so a source
    repeated with different targets (common in Tatoeba) cannot be learnt in train and then tested.

    The distinct keys, in order of first appearance, are shuffled with ``seed``, and whole groups go to
    test until it holds ``test_size`` items (or ``test_fraction`` of them, rounded) or just over; both
    sides keep the input order. The same pairs and seed always give the same split."""
    if (test_fraction is None) == (test_size is None):
        raise LmforgeError("split_pairs: give exactly one of test_fraction and test_size")
    if test_fraction is not None and not 0 < test_fraction < 1:
        raise LmforgeError(f"split_pairs: test_fraction must be between 0 and 1, got {test_fraction}")
    wanted = round(test_fraction * len(pairs)) if test_fraction is not None else test_size
    if not 0 < wanted < len(pairs):
        raise LmforgeError(f"split_pairs: a test side of {wanted} of {len(pairs)} items leaves a side empty")
    groups = Counter(key(item) for item in pairs)  # in order of first appearance
    order = list(groups)
    random.Random(seed).shuffle(order)
    test_keys, taken = set(), 0
    for k in order:
        if taken >= wanted:
            break
        test_keys.add(k)
        taken += groups[k]
    if taken == len(pairs):
        raise LmforgeError("split_pairs: the groups of equal keys all went to test; nothing is left to train")
    train = [item for item in pairs if key(item) not in test_keys]
    test = [item for item in pairs if key(item) in test_keys]
    return train, test
