"""Documents for the tokenizer and the shard builder: plain text, JSONL (optionally .gz or .zst) and Parquet.

A ``.txt`` file is one document; a ``.jsonl`` file holds one document per line in its ``text`` field, a
``.parquet`` file one per row of its ``text`` column (the formats ``lmforge data`` writes). In a folder,
files are picked by extension, names starting with ``_`` or ``.`` are skipped (``lmforge data`` keeps its
work files there), and a folder that ``lmforge data`` wrote gives its shards only. A file named on its own
is read by its content when its extension is unknown (WikiText's ``wiki.test.raw`` is plain text), with a
note saying what was assumed; binary content is an error naming the file.

Reading policy, the same for every kind (and like ``lmforge data run``'s readers): damage never stops a
run. Compression is recognised by its magic bytes. Bytes are decoded as UTF-8; UTF-8 with a few bad bytes
keeps them as U+FFFD; a plain-text file in another charset is read in the one charset-normalizer detects
(JSON lines and Parquet are UTF-8 by definition). A record that yields no text (undecodable, not JSON, no
string ``text`` field, empty) is skipped; a compressed stream that breaks or a Parquet file that cannot be
read keeps the documents before the break. Everything skipped or repaired is counted in a :class:`ReadLog`
and reported once at the end, naming the first few files and lines; no document at all is an error.
"""

from __future__ import annotations

import json
import sys
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from lmforge.data.readers import decompressed_blocks
from lmforge.errors import LmforgeError

TEXT_SUFFIXES = (".txt", ".md", ".text")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
KIND_NAMES = {"text": "plain text", "jsonl": "JSON lines", "parquet": "Parquet"}
GZIP_MAGIC, ZSTD_MAGIC, PARQUET_MAGIC = b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"PAR1"
SNIFF_BYTES = 1 << 16  # enough to tell text from binary and to hold a first JSON line
EXAMPLES = 3  # places named per reason in the report
NOTES = 10  # unknown-extension notes printed before the rest are only counted


@dataclass
class ReadLog:
    """What reading skipped or repaired, counted per reason with the first few places, for one report."""

    files: int = 0
    documents: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    repaired: Counter[str] = field(default_factory=Counter)  # read anyway: charset guessed, bytes replaced
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, where: str) -> None:
        self._count(self.skipped, reason, where)

    def repair(self, how: str, where: str) -> None:
        self._count(self.repaired, how, where)

    def _count(self, counter: Counter[str], key: str, where: str) -> None:
        counter[key] += 1
        places = self.examples.setdefault(key, [])
        if len(places) < EXAMPLES:
            places.append(where)

    def report(self) -> str:
        """A few lines: documents read, then each reason with its count and first places."""
        head = f"read {_count(self.documents, 'document')} from {_count(self.files, 'file')}"
        lines = [f"{head}; skipped {self.skipped.total():,}:" if self.skipped else f"{head}:"]
        for title, counter in (("skipped", self.skipped), ("read anyway", self.repaired)):
            for key, n in counter.most_common():
                more = f", ... ({n - EXAMPLES:,} more)" if n > EXAMPLES else ""
                lines.append(f"  {title}: {n:,} {key}: {', '.join(self.examples[key])}{more}")
        return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _kind_by_name(path: Path) -> str | None:
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


def _compression(magic: bytes) -> str | None:
    if magic.startswith(GZIP_MAGIC):
        return "gzip"
    return "zstd" if magic.startswith(ZSTD_MAGIC) else None


def _chunks(f: BinaryIO) -> Iterator[bytes]:
    """A file's bytes, decompressed by its magic bytes (the data pipeline's reader: a broken stream
    raises after everything readable before it was yielded)."""
    f.seek(0)
    compression = _compression(f.read(4))
    f.seek(0)
    return decompressed_blocks(f, compression)


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines split on ``\\n``; a stream that breaks drops its unfinished last line."""
    rest = b""
    for chunk in chunks:
        *lines, rest = (rest + chunk).split(b"\n")
        yield from lines
    if rest:
        yield rest


def _stream_damage(e: Exception) -> str:
    if isinstance(e, EOFError):
        return "truncated_file"
    if isinstance(e, OSError):
        return "unreadable_file"
    return "corrupt_stream"  # bad gzip or zstd data


def _stream_errors() -> tuple[type[Exception], ...]:
    """What a damaged plain, gzip or zstd file raises while being read."""
    errors: tuple[type[Exception], ...] = (OSError, EOFError, zlib.error)
    try:
        import zstandard
    except ImportError:
        return errors
    return (*errors, zstandard.ZstdError)


def _utf8(data: bytes) -> tuple[str, int] | None:
    """UTF-8 text and its count of bad sequences (kept as U+FFFD), or None when the bytes look like another
    charset: text in a legacy charset seldom forms valid multi-byte UTF-8, so ten of those per bad
    sequence mean a damaged UTF-8 file."""
    try:
        return data.decode("utf-8").removeprefix("\ufeff"), 0  # BOM dropped (utf-8-sig is slow pure Python)
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace").removeprefix("\ufeff")
    bad = text.count("\ufffd") - data.count("\ufffd".encode())
    multibyte = len(text) - len(text.encode("ascii", errors="ignore")) - bad
    return (text, bad) if multibyte >= 10 * bad else None


def _guess_charset(data: bytes) -> str | None:
    try:
        from charset_normalizer import from_bytes  # in the `data` extra
    except ImportError:
        return None
    best = from_bytes(data).best()
    return best.encoding if best is not None and best.encoding not in ("utf_8", "ascii") else None


def _decode(data: bytes, where: str, log: ReadLog, guess: bool) -> str | None:
    """Text by the reading policy (module docstring); None (and a skip counted) when nothing fits."""
    decoded = _utf8(data)
    if decoded is not None:
        text, bad = decoded
        if bad:
            log.repair("invalid_utf8_replaced", f"{where} ({bad} bad)")
        return text
    charset = _guess_charset(data) if guess else None
    if charset is None:
        log.skip("invalid_encoding", where)
        return None
    log.repair("charset_guessed", f"{where} ({charset})")
    return data.decode(charset, errors="replace")


def _is_json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _head(f: BinaryIO) -> bytes:
    """The first decompressed bytes of a file, as many as a damaged stream gives."""
    head = b""
    try:
        for chunk in _chunks(f):
            head += chunk
            if len(head) >= SNIFF_BYTES:
                break
    except _stream_errors():
        pass  # counted when the file is read
    return head[:SNIFF_BYTES]


def _sniff(path: Path) -> tuple[str, str | None]:
    """Kind and compression of a file without a known extension, from its first bytes."""
    with open(path, "rb") as f:
        magic = f.read(4)
        if magic == PARQUET_MAGIC:
            return "parquet", None
        head = _head(f)
    if b"\x00" in head or (_utf8(head) is None and _guess_charset(head) is None):
        raise LmforgeError(
            f"{path}: binary data: no known extension (.txt/.md, .jsonl, optionally .gz or .zst, .parquet) "
            "and the content is not text, JSON lines or Parquet"
        )
    first = next((line for line in head.splitlines() if line.strip()), b"")
    return ("jsonl" if _is_json_object(first) else "text"), _compression(magic)


def _kind(path: Path) -> str:
    return _kind_by_name(path) or _sniff(path)[0]


def _note_unknown(path: Path) -> str:
    kind, compression = _sniff(path)
    compressed = f"{compression}-compressed " if compression else ""
    return f"note: {path}: no known extension, read as {compressed}{KIND_NAMES[kind]}"


def _folder_files(folder: Path) -> list[Path]:
    """A folder's inputs by extension (a folder may hold anything), sorted."""
    # An `lmforge data` output folder contributes its shards, not its report (summary.md).
    from_data_run = (folder / "_work" / "run.json").is_file()
    kinds = ("jsonl", "parquet") if from_data_run else ("text", "jsonl", "parquet")
    found = (f for f in folder.rglob("*") if f.is_file() and not _hidden(f, folder))
    return sorted(f for f in found if _kind_by_name(f) in kinds)


def _print_notes(notes: list[str]) -> None:
    for note in notes[:NOTES]:
        print(note, file=sys.stderr)
    if len(notes) > NOTES:
        print(f"note: {len(notes) - NOTES} more files with no known extension", file=sys.stderr)


def list_inputs(inputs: list[str]) -> list[Path]:
    """Input files from files and folders (searched recursively), sorted so runs are reproducible. A file
    named with an unknown extension is sniffed (binary: an error) and a note says what it is read as."""
    files: list[Path] = []
    notes: list[str] = []
    for spec in inputs:
        p = Path(spec).expanduser()
        if p.is_dir():
            files.extend(_folder_files(p))
        elif p.is_file():
            if _kind_by_name(p) is None:
                notes.append(_note_unknown(p))
            files.append(p)
        else:
            raise LmforgeError(f"{p}: no such file or folder")
    if not files:
        raise LmforgeError(
            f"no .txt, .jsonl or .parquet input found in {inputs} (in a folder, files are picked by "
            "extension; name other files on their own)"
        )
    _print_notes(notes)
    return files


def _text_documents(path: Path, log: ReadLog) -> Iterator[str]:
    parts: list[bytes] = []
    with open(path, "rb") as f:
        try:
            parts.extend(_chunks(f))
        except _stream_errors() as e:
            log.skip(_stream_damage(e), f"{path} (after {sum(map(len, parts)):,} bytes)")
    text = _decode(b"".join(parts), str(path), log, guess=True)
    if text is None:
        return
    if not text.strip():
        log.skip("empty", str(path))
        return
    yield text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as text mode reads them


def _json_record(line: bytes, where: str, log: ReadLog) -> dict | None:
    text = _decode(line, where, log, guess=False)
    if text is None:
        return None  # counted as invalid_encoding
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        log.skip("invalid_json", where)
        return None
    return record


def _json_text(line: bytes, where: str, text_key: str, log: ReadLog) -> str | None:
    record = _json_record(line, where, log)
    if record is None:
        return None
    text = record.get(text_key)
    if not isinstance(text, str):
        log.skip(f"missing_{text_key}", where)
        return None
    if not text.strip():
        log.skip("empty", where)
        return None
    return text


def _jsonl_documents(path: Path, text_key: str, log: ReadLog) -> Iterator[str]:
    n = 0
    with open(path, "rb") as f:
        try:
            for n, line in enumerate(_lines(_chunks(f)), 1):
                text = _json_text(line, f"{path}:{n}", text_key, log) if line.strip() else None
                if text is not None:
                    yield text
        except _stream_errors() as e:
            log.skip(_stream_damage(e), f"{path}:{n + 1}")


def _parquet_documents(path: Path, text_key: str, log: ReadLog) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq  # in the `data` extra, which writes these files

    row = 0
    try:
        table = pq.ParquetFile(path)
        names = table.schema_arrow.names
        if text_key not in names:
            log.skip(f"missing_{text_key}", f"{path} (columns: {', '.join(names)})")
            return
        for batch in table.iter_batches(columns=[text_key]):
            for text in batch.column(0).to_pylist():
                if not isinstance(text, str):
                    log.skip(f"missing_{text_key}", f"{path} row {row}")
                elif not text.strip():
                    log.skip("empty", f"{path} row {row}")
                else:
                    yield text
                row += 1
    except (OSError, pa.ArrowException):
        log.skip("unreadable_file", f"{path} row {row}")


def iter_documents(path: Path, text_key: str = "text", log: ReadLog | None = None) -> Iterator[str]:
    """The documents of one input file, in order; what was skipped or repaired is counted in ``log``."""
    log = log if log is not None else ReadLog()
    log.files += 1
    kind = _kind(path)
    if kind == "parquet":
        docs = _parquet_documents(path, text_key, log)
    elif kind == "jsonl":
        docs = _jsonl_documents(path, text_key, log)
    else:
        docs = _text_documents(path, log)
    for doc in docs:
        log.documents += 1
        yield doc


def iter_corpus(files: list[Path], text_key: str = "text", log: ReadLog | None = None) -> Iterator[str]:
    """All documents of ``files``; at the end, what was skipped or repaired is reported on stderr, and an
    input with no document at all is an error (a wrong ``text_key`` shows up there)."""
    log = log if log is not None else ReadLog()
    for path in files:
        yield from iter_documents(path, text_key, log)
    if not log.documents:
        raise LmforgeError(f"the input holds no documents: {log.report()}")
    if log.skipped or log.repaired:
        print(log.report(), file=sys.stderr)
