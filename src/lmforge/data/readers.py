"""Readers: WARC, HTML files, JSONL, Parquet and plain text -> documents, and input discovery.

A reader never raises on data: a record it cannot use becomes a :class:`Skip` with a named reason (so the
funnel shows it), and a file that breaks half-way keeps the documents read before the break. Damage costs
only what it touches: a WARC reader restarts at the next gzip member, zstd frame or WARC header, a Parquet
reader at the next row group. HTTP bodies are un-chunked and decompressed when they really are.
"""

from __future__ import annotations

import glob
import gzip
import json
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal, Protocol

from lmforge.data.document import Document, Skip
from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    from fastwarc.warc import HeaderMap, WarcRecord

FORMATS = {
    "warc": (".warc", ".warc.gz", ".warc.zst", ".arc.gz"),
    "html": (".html", ".htm", ".html.gz", ".htm.gz"),
    "jsonl": (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".ndjson"),
    "parquet": (".parquet",),
    "text": (".txt", ".txt.gz"),
}
SINGLE_DOC_FORMATS = ("html", "text")  # one document per file: small files are grouped into shards
BLOCK = 1 << 16  # bytes read at a time
ZSTD_READ = 1 << 12  # zstd input at a time: what a damaged frame can take with it beyond its broken block
ZLIB_DECOMPRESS = type(zlib.decompressobj())
# Where a WARC record can start again after damage: a gzip member or zstd frame (their magic bytes, by the
# extension), else a WARC header.
RESYNC = {".gz": b"\x1f\x8b\x08", ".zst": b"\x28\xb5\x2f\xfd"}
WARC_HEADER = b"WARC/1."

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


def _compression(path: Path) -> str | None:
    """By the name, as the user declared it (.gz, .zst; any case)."""
    name = path.name.lower()
    return "gzip" if name.endswith(".gz") else "zstd" if name.endswith(".zst") else None


class _Decompressor(Protocol):
    eof: bool
    unused_data: bytes

    def decompress(self, data: bytes) -> bytes: ...


def decompressed_blocks(f: BinaryIO, compression: str | None) -> Iterator[bytes]:
    """A file's bytes, decompressed gzip member by member or zstd frame by frame. Damage raises only after
    everything decoded before it was yielded (a buffered reader on top would drop some), and a file cut
    inside a member or frame raises EOFError (zstandard's stream reader ends quietly there)."""
    if compression is None:
        yield from iter(lambda: f.read(BLOCK), b"")
        return
    new: Callable[[], _Decompressor]
    if compression == "gzip":
        new, size = partial(zlib.decompressobj, 31), BLOCK
    else:
        import zstandard

        new, size = zstandard.ZstdDecompressor().decompressobj, ZSTD_READ
    d, fed = new(), False
    while block := f.read(size):
        while block:
            yield from _decompress(d, block)
            fed, block = True, b""
            if d.eof:  # the next member or frame starts in what this one left over
                d, fed, block = new(), False, d.unused_data
    if fed:
        raise EOFError("the file ends inside a compressed member or frame")


def _decompress(d: _Decompressor, block: bytes) -> Iterator[bytes]:
    """``d.decompress(block)``. When zlib raises, the output before the damage would be lost with it, so
    the block is fed again byte by byte from a copy of the state before it, up to the same error. zstd
    has no copy: it gets small reads (``ZSTD_READ``) instead."""
    if not isinstance(d, ZLIB_DECOMPRESS):
        yield d.decompress(block)
        return
    saved = d.copy()
    try:
        out = d.decompress(block)
    except zlib.error:
        yield from (saved.decompress(block[i : i + 1]) for i in range(len(block)))
        raise
    yield out


def _stream_errors() -> tuple[type[Exception], ...]:
    """What a damaged plain, gzip or zstd file raises while being read."""
    import zstandard

    return (OSError, EOFError, zlib.error, zstandard.ZstdError)


def _stream_error(e: Exception) -> Skip:
    """Name a mid-file failure: a broken compressed stream or a file that simply ends too early."""
    if isinstance(e, EOFError):
        return Skip("truncated_file")
    if isinstance(e, gzip.BadGzipFile | zlib.error):
        return Skip("bad_gzip")
    return Skip("unreadable_file" if isinstance(e, OSError) else "bad_zstd")


def read_warc(path: Path, cfg: ReaderConfig) -> Iterator[Item]:
    """Response and conversion records. Where fastwarc raises on damaged bytes, one ``corrupt_record`` is
    counted and reading restarts at the next gzip member, zstd frame or WARC header after the last good
    record: a damaged spot costs the records it touches, not the rest of the file."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    wanted = WarcRecordType.response | WarcRecordType.conversion
    marker = next((m for ext, m in RESYNC.items() if path.name.lower().endswith(ext)), WARC_HEADER)
    with open(path, "rb") as f:
        start: int | None = 0
        counted = False  # this damaged spot has its corrupt_record already
        while start is not None:
            last = start
            try:
                f.seek(start)
                for rec in ArchiveIterator(f, parse_http=False, fsspec_args=False):
                    last, counted = rec.stream_pos, False
                    if rec.record_type & wanted:
                        if rec.is_http:
                            rec.parse_http()
                        yield _warc_item(rec, rec.reader.read(), cfg)
                    elif rec.record_type == WarcRecordType.unknown:  # a garbled WARC-Type line
                        yield Skip("corrupt_record")
                return
            except Exception:  # fastwarc raises OSError on damage; whatever breaks a record is damage
                if not counted:
                    yield Skip("corrupt_record")
                counted = True
                start = _find(f, last + 1, marker)


def _find(f: BinaryIO, pos: int, marker: bytes) -> int | None:
    """Offset of the first ``marker`` at or after ``pos``; None if there is none."""
    while True:
        f.seek(pos)
        block = f.read(BLOCK)
        i = block.find(marker)
        if i >= 0:
            return pos + i
        if len(block) < BLOCK:
            return None
        pos += BLOCK - len(marker) + 1


def _warc_item(rec: WarcRecord, body: bytes, cfg: ReaderConfig) -> Item:
    from fastwarc.warc import WarcRecordType

    h = rec.headers
    mime = (h.get("WARC-Identified-Payload-Type") or rec.http_content_type or "").lower()
    is_wet = rec.record_type == WarcRecordType.conversion
    if len(body) < rec.content_length or h.get("Content-Length") is None:  # the file ends inside it
        return Skip("truncated_record")
    if mime and "html" not in mime and not (is_wet and mime.startswith("text/plain")):
        return Skip("not_html")
    if rec.is_http:
        body = _http_payload(rec.http_headers, body, cfg.max_bytes + 1)
        if isinstance(body, Skip):
            return body
    if len(body) > cfg.max_bytes:
        return Skip("too_large")
    html = "html" in mime or (not mime and not is_wet and body.lstrip()[:1] == b"<")
    if not html and not is_wet:
        return Skip("not_html")
    text = decode(body, rec.http_charset)
    if isinstance(text, Skip):
        return text
    url = (h.get("WARC-Target-URI") or h.get("uri") or "").strip().strip("<>")
    meta = {"date": h.get("WARC-Date") or h.get("archive-date") or ""}
    return Document(text=text, id=(rec.record_id or url).strip("<>"), url=url, metadata=meta, html=html)


def _http_payload(headers: HeaderMap, body: bytes, limit: int) -> bytes | Skip:
    """The payload as the server meant it: chunks joined, then content codings undone, the last applied
    first. A crawler that stored it decoded may have kept the headers: then the body stays as it is."""
    codings = [
        c.strip().lower()
        for name in ("Content-Encoding", "Transfer-Encoding")
        for value in headers.get_multiple(name)
        for c in value.split(",")
    ]
    for coding in reversed(codings):
        if coding in ("", "identity"):
            continue
        body = _dechunk(body) if coding == "chunked" else _uncompress(coding, body, limit)
        if isinstance(body, Skip):
            return body
    return body


CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r?\n")


def _dechunk(body: bytes) -> bytes | Skip:
    """The payload of a chunked body. A body that does not start with a chunk size was stored decoded (kept
    as it is); framing that breaks after that is damage. A body cut short keeps the chunks it has."""
    if CHUNK_SIZE.match(body) is None:
        return body
    parts: list[bytes] = []
    pos = 0
    while pos < len(body):
        head = CHUNK_SIZE.match(body, pos)
        if head is None:
            return Skip("bad_chunked")
        size = int(head[1], 16)
        if size == 0:
            break
        end = head.end() + size
        if end < len(body) and not body.startswith((b"\r\n", b"\n"), end):
            return Skip("bad_chunked")
        parts.append(body[head.end() : end])
        pos = end + (1 if body.startswith(b"\n", end) else 2)
    return b"".join(parts)


def _uncompress(coding: str, body: bytes, limit: int) -> bytes | Skip:
    """``body`` with one content coding undone, at most ``limit`` bytes of it. Gzip, zlib or zstd data (known
    by its magic bytes) that fails is damage, and a cut stream keeps what it has. Raw deflate and brotli have
    no magic: only a stream that decodes to its end (or to the limit) counts. Anything else was stored
    decoded: kept if it looks like text."""
    import brotli  # a dependency of fastwarc
    import zstandard

    zlib_header = len(body) > 1 and body[0] & 0x0F == 8 and (body[0] << 8 | body[1]) % 31 == 0
    zlib_magic = coding in ("gzip", "x-gzip", "deflate") and (body[:2] == b"\x1f\x8b" or zlib_header)
    zstd_magic = coding == "zstd" and body[:4] == RESYNC[".zst"]
    out = None
    try:
        if zlib_magic:
            out = zlib.decompressobj(47).decompress(body, limit)  # 47: a gzip or a zlib header
        elif zstd_magic:
            out = zstandard.ZstdDecompressor().stream_reader(body).read(limit)
        elif coding == "deflate":
            d = zlib.decompressobj(-15)
            out = d.decompress(body, limit)
            out = out if d.eof or len(out) >= limit else None
        elif coding == "br":
            b = brotli.Decompressor()
            out = b.process(body, output_buffer_limit=limit)  # brotli >= 1.2
            out = out if b.is_finished() or len(out) >= limit else None
    except (zlib.error, zstandard.ZstdError, brotli.error):
        if zlib_magic or zstd_magic:
            return Skip("bad_content_encoding")
    if out is None:
        looks_decoded = body.lstrip()[:1] == b"<" and b"\x00" not in body[:4096]
        return body if looks_decoded or _is_utf8(body) else Skip("bad_content_encoding")
    return out


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def read_single(path: Path, cfg: ReaderConfig, html: bool) -> Iterator[Item]:
    parts: list[bytes] = []
    size = 0
    try:
        with open(path, "rb") as f:
            for block in decompressed_blocks(f, _compression(path)):
                parts.append(block)
                size += len(block)
                if size > cfg.max_bytes:
                    yield Skip("too_large")
                    return
    except _stream_errors() as e:
        yield _stream_error(e)
        return
    text = decode(b"".join(parts))
    if isinstance(text, Skip):
        yield text
        return
    doc_id = path.name.split(".")[0]
    yield Document(text=text, id=doc_id, metadata={"source": path.name}, html=html)


def read_jsonl(path: Path, cfg: ReaderConfig) -> Iterator[Item]:
    try:
        with open(path, "rb") as f:
            for n, line in enumerate(_lines(decompressed_blocks(f, _compression(path)))):
                if line.strip():
                    yield _json_item(line, cfg, f"{path.name}:{n}")
    except _stream_errors() as e:
        yield _stream_error(e)


def _lines(blocks: Iterator[bytes]) -> Iterator[bytes]:
    """Lines split on ``\\n``, a line over many blocks joined once; when the stream breaks, its unfinished
    last line goes with it."""
    head: list[bytes] = []
    for block in blocks:
        *lines, tail = block.split(b"\n")
        if lines:
            yield b"".join([*head, lines[0]])
            yield from lines[1:]
            head = []
        head.append(tail)
    if any(head):
        yield b"".join(head)


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
    """Rows, row group by row group: a damaged group costs its own unread rows (each counted), not the rest
    of the file; a file whose footer cannot be read is one ``unreadable_file``."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path, page_checksum_verification=True)  # checks pages that carry a CRC
    except Exception:  # pyarrow raises ArrowInvalid/OSError subclasses on a damaged file
        yield Skip("unreadable_file")
        return
    n = 0
    for group in range(pf.num_row_groups):
        end = n + pf.metadata.row_group(group).num_rows
        try:
            for batch in pf.iter_batches(batch_size=1024, row_groups=[group]):
                for rec in batch.to_pylist():
                    yield _record_item(rec, cfg, f"{path.name}:{n}")
                    n += 1
        except Exception:  # a damaged page or column chunk
            yield from (Skip("corrupt_row_group") for _ in range(end - n))
            n = end


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
