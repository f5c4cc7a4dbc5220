"""Readers: WARC, HTML files, JSONL, Parquet and plain text -> documents, and input discovery.

A reader never raises on data: a record it cannot use becomes a :class:`Skip` with a named reason (so the
funnel shows it), and a file that breaks half-way keeps the documents read before the break.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lmforge.data.document import Document, Skip
from lmforge.errors import LmforgeError

FORMATS = {
    "warc": (".warc", ".warc.gz", ".warc.zst", ".arc.gz"),
    "html": (".html", ".htm", ".html.gz", ".htm.gz"),
    "jsonl": (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".ndjson"),
    "parquet": (".parquet",),
    "text": (".txt", ".txt.gz"),
}
SINGLE_DOC_FORMATS = ("html", "text")  # one document per file: small files are grouped into shards

Item = Document | Skip


@dataclass
class ReaderConfig:
    format: Literal["auto", "warc", "html", "jsonl", "parquet", "text"] = "auto"  # auto: by extension
    text_key: str = "text"
    id_key: str = "id"
    url_key: str = "url"
    html: bool = False  # JSONL/Parquet records hold raw HTML (e.g. a crawl dump) rather than text
    files_per_shard: int = 64  # for one-document-per-file formats (html, text)
    max_bytes: int = 10_000_000  # bigger pages are skipped as too_large


def detect_format(path: str | Path, forced: str = "auto") -> str | None:
    if forced != "auto":
        return forced
    name = str(path).lower()
    for fmt, exts in FORMATS.items():
        if name.endswith(exts):
            return fmt
    return None


def discover(inputs: list[str], forced: str = "auto") -> list[Path]:
    """Sorted input files from files, folders (recursively) and globs; fails naming what is missing."""
    files: set[Path] = set()
    for spec in inputs:
        p = Path(spec).expanduser()
        if p.is_file():
            files.add(p)
        elif p.is_dir():
            ours = (
                p / "_work" / "run.json"
            ).is_file()  # an output of ours: its shards, not _work/ or _dropped/
            files.update(
                f
                for f in p.rglob("*")
                if f.is_file()
                and detect_format(f, forced)
                and not (ours and f.relative_to(p).parts[0][0] in "_.")
            )
        elif glob.has_magic(spec):
            matched = [Path(f) for f in glob.glob(str(p), recursive=True)]
            if not matched:
                raise LmforgeError(f"input {spec!r}: the pattern matches no file")
            files.update(f for f in matched if f.is_file())
        else:
            raise LmforgeError(f"input {spec!r} does not exist")
    unknown = sorted(str(f) for f in files if detect_format(f, forced) is None)
    if unknown:
        raise LmforgeError(
            f"input {unknown[0]!r}: unknown format (set reader.format to one of {', '.join(FORMATS)})"
        )
    if not files:
        raise LmforgeError(f"input {inputs!r}: no readable files found (known: {', '.join(FORMATS)})")
    return sorted(files)


def make_shards(files: list[Path], cfg: ReaderConfig) -> list[list[Path]]:
    """Work units: one container file (WARC, JSONL, Parquet) or a group of one-document files each."""
    shards: list[list[Path]] = []
    group: list[Path] = []
    for f in files:
        if detect_format(f, cfg.format) in SINGLE_DOC_FORMATS:
            group.append(f)
            if len(group) == cfg.files_per_shard:
                shards.append(group)
                group = []
        else:
            shards.append([f])
    if group:
        shards.append(group)
    return shards


def decode(data: bytes, declared: str | None = None) -> str | Skip:
    """UTF-8, else the declared charset, else a detected one; empty, binary or undecodable bytes: a skip."""
    if not data.strip():
        return Skip("empty")
    if b"\x00" in data[:4096]:
        return Skip("binary")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if declared and declared.lower().replace("-", "") != "utf8":
        try:
            return data.decode(declared)
        except (UnicodeDecodeError, LookupError):
            pass
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    return (
        str(best)
        if best is not None and best.encoding not in ("utf_8", "utf-8")
        else Skip("invalid_encoding")
    )


def open_binary(path: Path) -> io.BufferedIOBase:
    """A file's bytes, decompressed by its name (.gz, .zst; any case)."""
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    return open(path, "rb")


def _stream_error(e: Exception) -> Skip:
    """Name a mid-file failure: a broken compressed stream or a file that simply ends too early."""
    if isinstance(e, EOFError):
        return Skip("truncated_file")
    if isinstance(e, gzip.BadGzipFile | zlib.error):
        return Skip("bad_gzip")
    return Skip("unreadable_file")


def read_warc(path: Path, cfg: ReaderConfig) -> Iterator[Item]:
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    wanted = WarcRecordType.response | WarcRecordType.conversion
    try:
        for rec in ArchiveIterator(str(path), record_types=wanted, parse_http=True, fsspec_args=False):
            yield _warc_item(rec, cfg)
    except Exception:  # fastwarc raises on a corrupt or truncated record; the rest of the file is lost
        yield Skip("corrupt_record")


def _warc_item(rec, cfg: ReaderConfig) -> Item:
    from fastwarc.warc import WarcRecordType

    try:
        h = rec.headers
        mime = (h.get("WARC-Identified-Payload-Type") or rec.http_content_type or "").lower()
        is_wet = rec.record_type == WarcRecordType.conversion
        body = rec.reader.read()
        if len(body) < rec.content_length:  # the file ends inside this record
            return Skip("truncated_record")
        if len(body) > cfg.max_bytes:
            return Skip("too_large")
        html = "html" in mime or (not mime and not is_wet and body.lstrip()[:1] == b"<")
        if not html and not (is_wet and (not mime or mime.startswith("text/plain"))):
            return Skip("not_html")
        text = decode(body, rec.http_charset)
    except Exception:
        return Skip("corrupt_record")
    if isinstance(text, Skip):
        return text
    url = (h.get("WARC-Target-URI") or h.get("uri") or "").strip().strip("<>")
    meta = {"date": h.get("WARC-Date") or h.get("archive-date") or ""}
    return Document(text=text, id=(rec.record_id or url).strip("<>"), url=url, metadata=meta, html=html)


def read_single(path: Path, cfg: ReaderConfig, html: bool) -> Iterator[Item]:
    try:
        with open_binary(path) as f:
            data = f.read(cfg.max_bytes + 1)
    except (OSError, EOFError, zlib.error) as e:
        yield _stream_error(e)
        return
    if len(data) > cfg.max_bytes:
        yield Skip("too_large")
        return
    text = decode(data)
    if isinstance(text, Skip):
        yield text
        return
    doc_id = path.name.split(".")[0]
    yield Document(text=text, id=doc_id, metadata={"source": path.name}, html=html)


def read_jsonl(path: Path, cfg: ReaderConfig) -> Iterator[Item]:
    try:
        with open_binary(path) as raw:
            for n, line in enumerate(io.BufferedReader(raw)):
                if line.strip():
                    yield _json_item(line, cfg, f"{path.name}:{n}")
    except (OSError, EOFError, zlib.error, ValueError) as e:
        yield _stream_error(e)


def _json_item(line: bytes, cfg: ReaderConfig, fallback_id: str) -> Item:
    try:
        rec = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return Skip("invalid_encoding")
    except ValueError:
        return Skip("invalid_json")
    if not isinstance(rec, dict):
        return Skip("invalid_json")
    return _record_item(rec, cfg, fallback_id)


def _record_item(rec: dict, cfg: ReaderConfig, fallback_id: str) -> Item:
    text = rec.get(cfg.text_key)
    if not isinstance(text, str):
        return Skip("missing_text")
    if not text.strip():
        return Skip("empty")
    meta = rec.get("metadata")
    if isinstance(meta, str):  # Parquet shards written by lmforge keep metadata as a JSON string
        try:
            meta = json.loads(meta)
        except ValueError:
            meta = {}
    meta = meta if isinstance(meta, dict) else {}
    doc_id = str(rec.get(cfg.id_key) or fallback_id)
    html = cfg.html or rec.get("html") is True  # lmforge's own records say so themselves
    return Document(text=text, id=doc_id, url=str(rec.get(cfg.url_key) or ""), metadata=meta, html=html)


def read_parquet(path: Path, cfg: ReaderConfig) -> Iterator[Item]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        n = 0
        for batch in pf.iter_batches(batch_size=1024):
            for rec in batch.to_pylist():
                yield _record_item(rec, cfg, f"{path.name}:{n}")
                n += 1
    except Exception:  # pyarrow raises ArrowInvalid/OSError subclasses on a damaged file
        yield Skip("unreadable_file")


def read_shard(files: list[Path], cfg: ReaderConfig) -> Iterator[Item]:
    """Everything in a shard's files, in order."""
    for path in files:
        fmt = detect_format(path, cfg.format)
        if fmt == "warc":
            yield from read_warc(path, cfg)
        elif fmt in SINGLE_DOC_FORMATS:
            yield from read_single(path, cfg, html=fmt == "html")
        elif fmt == "jsonl":
            yield from read_jsonl(path, cfg)
        elif fmt == "parquet":
            yield from read_parquet(path, cfg)
        else:
            raise LmforgeError(f"{path}: unknown reader format {fmt!r}")
