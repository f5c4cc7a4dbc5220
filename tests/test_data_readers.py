"""Readers and writers, bad input (skipped and counted under a named reason, never a crash) and errors that
must stop a run before any work starts."""

from __future__ import annotations

import gzip
import io
import json
import re
import zlib
from collections import Counter
from pathlib import Path

import pytest

from lmforge.config import ConfigError
from lmforge.data.config import PipelineConfig, load_data_config
from lmforge.data.document import Document, Skip
from lmforge.data.readers import ReaderConfig, discover, make_shards, read_shard
from lmforge.data.run import run_pipeline
from lmforge.data.writers import DocumentWriter
from lmforge.errors import LmforgeError


def read(path: Path, **kw) -> list[Document | Skip]:
    return list(read_shard([path], ReaderConfig(**kw)))


def kinds(items) -> Counter:
    return Counter("doc" if isinstance(i, Document) else i.reason for i in items)


def test_warc_reader(shared_data):
    items = read(shared_data / "web/warc/dolma-sample-0000.warc.gz")
    assert kinds(items) == {"doc": 22}
    doc = items[0]
    assert doc.html and doc.url == "https://www.semanticscholar.org/research/research-team"  # <...> stripped
    assert doc.id == "urn:uuid:283E41D7-F686-4C3E-B7DA-E8D248A100C1"
    assert doc.metadata["date"].startswith("2024-04-25")
    assert kinds(read(shared_data / "web/warc/cc-sample-resiliparse.warc.gz")) == {"doc": 16}


def test_truncated_and_corrupt_warc(shared_data, tmp_path):
    data = (shared_data / "web/warc/dolma-sample-0000.warc.gz").read_bytes()
    (tmp_path / "cut.warc.gz").write_bytes(data[: len(data) // 2])
    broken = bytearray(data)
    broken[len(data) // 2 : len(data) // 2 + 200] = b"x" * 200
    (tmp_path / "bad.warc.gz").write_bytes(bytes(broken))
    (tmp_path / "junk.warc.gz").write_bytes(b"this is not a WARC file" * 20)
    assert kinds(read(tmp_path / "cut.warc.gz")) == {"doc": 13, "truncated_record": 1}
    assert kinds(read(tmp_path / "bad.warc.gz")) == {"doc": 21, "corrupt_record": 1}  # the record it hit
    assert kinds(read(tmp_path / "junk.warc.gz")) == {"corrupt_record": 1}


def response_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each response record's gzip member in a .warc.gz of one member per record."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    records = [(r.stream_pos, r.record_type) for r in ArchiveIterator(io.BytesIO(data), parse_http=False)]
    ends = [pos for pos, _ in records[1:]] + [len(data)]
    return [(pos, end) for (pos, kind), end in zip(records, ends) if kind == WarcRecordType.response]


def _junk_between(data: bytes, start: int, end: int) -> bytes:
    return data[:start] + bytes(range(256)) * 16 + data[start:]  # 4 KB just before the record


def _garbled(data: bytes, start: int, end: int) -> bytes:
    mid = (start + end) // 2
    return data[:mid] + bytes(b ^ 0x5A for b in data[mid : mid + 64]) + data[mid + 64 :]


def _two_flipped_bits(data: bytes, start: int, end: int) -> bytes:
    flipped = bytearray(data)
    flipped[(start + end) // 2] ^= 0x10
    flipped[(start + end) // 2 + 40] ^= 0x01
    return bytes(flipped)


@pytest.mark.parametrize(("damage", "lost"), [(_junk_between, 0), (_garbled, 1), (_two_flipped_bits, 1)])
def test_warc_damage_costs_only_the_records_it_touches(shared_data, tmp_path, damage, lost):
    """Reading restarts at the next gzip member: one corrupt_record per damaged spot, and every record of
    the 22 that the damage did not touch is read as before (it used to lose the 11 after it)."""
    data = (shared_data / "web/warc/dolma-sample-0000.warc.gz").read_bytes()
    spans = response_spans(data)
    (tmp_path / "x.warc.gz").write_bytes(damage(data, *spans[11]))  # the 12th of 22 responses
    items = read(tmp_path / "x.warc.gz")
    assert kinds(items) == {"doc": 22 - lost, "corrupt_record": 1}
    good = [d.id for d in read(shared_data / "web/warc/dolma-sample-0000.warc.gz")]
    assert [d.id for d in items if isinstance(d, Document)] == good[:11] + good[11 + lost :]


def test_plain_warc_restarts_at_the_next_header(shared_data, tmp_path):
    plain = gzip.decompress((shared_data / "web/warc/dolma-sample-0000.warc.gz").read_bytes())
    start = [m.start() for m in re.finditer(rb"WARC/1\.0\r\nWARC-Type: response", plain)][11]
    (tmp_path / "junk.warc").write_bytes(plain[:start] + b"junk " * 800 + plain[start:])
    (tmp_path / "type.warc").write_bytes(plain[: start + 20] + b"\xff" * 8 + plain[start + 28 :])
    (tmp_path / "header.warc").write_bytes(plain[:start] + b"WARC/1.0 garbled" + plain[start + 8 :])
    assert kinds(read(tmp_path / "junk.warc")) == {"doc": 22, "corrupt_record": 1}
    assert kinds(read(tmp_path / "type.warc")) == {"doc": 21, "corrupt_record": 1}  # a WARC-Type: unknown
    assert kinds(read(tmp_path / "header.warc")) == {"doc": 21, "corrupt_record": 1}


def warc_gz(*https: bytes) -> bytes:
    """A .warc.gz of these HTTP responses, one gzip member per record."""
    records = []
    for i, http in enumerate(https):
        head = (
            f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:{i}>\r\n"
            f"WARC-Target-URI: http://example.com/{i}\r\nWARC-Date: 2024-01-01T00:00:00Z\r\n"
            f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(http)}\r\n\r\n"
        )
        records.append(gzip.compress(head.encode() + http + b"\r\n\r\n"))
    return b"".join(records)


def response(body: bytes, **headers: str) -> bytes:
    lines = ["HTTP/1.1 200 OK", "Content-Type: text/html; charset=utf-8"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


def chunked(data: bytes, size: int = 16) -> bytes:
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


def test_http_bodies_are_decoded_when_they_really_are_encoded(tmp_path):
    """Chunks joined and gzip/deflate/br/zstd undone; a crawler that stored the body decoded but kept the
    header gets its body as it is; broken framing or compressed data is counted, and so is a bomb."""
    import brotli
    import zstandard

    page = b"<html><body><p>The way most interviewees caught up with the news.</p></body></html>"
    gz = gzip.compress(page)
    garbled = gz[:12] + bytes(b ^ 0xFF for b in gz[12:30]) + gz[30:]
    frames = chunked(page)
    cases = [
        (response(frames, Transfer_Encoding="chunked"), page),
        (
            response(b"1a;ext=1\r\n" + page[:26] + b"\r\n" + chunked(page[26:]), Transfer_Encoding="chunked"),
            page,
        ),
        (response(frames[:50], Transfer_Encoding="chunked"), page[:34]),  # cut by the crawler
        (response(page, Transfer_Encoding="chunked"), page),  # stored decoded, header kept
        (response(frames[:20] + b"??" + frames[22:], Transfer_Encoding="chunked"), "bad_chunked"),
        (response(frames[:42] + frames[44:], Transfer_Encoding="chunked"), "bad_chunked"),
        (response(gz, Content_Encoding="gzip"), page),
        (response(chunked(gz), Content_Encoding="gzip", Transfer_Encoding="chunked"), page),
        (response(page, Content_Encoding="gzip"), page),
        (response(garbled, Content_Encoding="gzip"), "bad_content_encoding"),
        (response(zlib.compress(page), Content_Encoding="deflate"), page),
        (response(zlib.compress(page)[2:-4], Content_Encoding="deflate"), page),  # raw deflate
        (response(page, Content_Encoding="deflate"), page),
        (response(brotli.compress(page), Content_Encoding="br"), page),
        (response(page, Content_Encoding="br"), page),
        (response(brotli.compress(page)[:-4], Content_Encoding="br"), "bad_content_encoding"),
        (response(zstandard.ZstdCompressor().compress(page), Content_Encoding="zstd"), page),
        (response(page, Content_Encoding="zstd"), page),
        (response(gzip.compress(b"<p>" + b" " * 5000), Content_Encoding="gzip"), "too_large"),
    ]
    (tmp_path / "x.warc.gz").write_bytes(warc_gz(*(http for http, _ in cases)))
    got = [
        i.text if isinstance(i, Document) else i.reason for i in read(tmp_path / "x.warc.gz", max_bytes=4000)
    ]
    assert got == [want.decode() if isinstance(want, bytes) else want for _, want in cases]


def test_chunked_responses_in_the_shared_warcs(shared_data):
    """6 of the 53 responses were sent chunked and stored so by wget: their chunk sizes sat in the text."""
    docs = [d for n in ("0000", "0001") for d in read(shared_data / f"web/warc/dolma-sample-{n}.warc.gz")]
    assert len(docs) == 37 and all(isinstance(d, Document) for d in docs)
    assert [d.url for d in docs if re.search(r"(^|\r\n)[0-9a-f]+\r\n", d.text)] == []
    (amy,) = (d for d in docs if d.url == "https://amyxzhang.wordpress.com/")
    assert "The way most interviewees caught up" in amy.text  # was "inte\r\n7ff7\r\nrviewees"
    assert amy.text.rstrip().endswith("</html>")


def chunk_markers(warcs: list[Path]) -> set[str]:
    """The chunk sizes written in the chunked bodies, those with a hex letter (digits alone are common)."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    markers = set()
    for path in warcs:
        for rec in ArchiveIterator(str(path), record_types=WarcRecordType.response):
            if rec.http_headers.get("Transfer-Encoding") == "chunked":
                body = rec.reader.read().decode("utf-8", "replace")
                markers.update(re.findall(r"(?:^|\r\n)([0-9a-f]*[a-f][0-9a-f]*)\r\n", body))
    return markers


def test_readme_chain_keeps_no_chunk_markers(shared_data, tmp_path):
    """`lmforge data run --config data/refinedweb` on the shared WARCs, as the README runs it: no kept
    document holds a chunk size (it kept "inte 7ff7 rviewees" and "Advocacy 170d" before)."""
    from lmforge.cli import main

    warcs = sorted((shared_data / "web/warc").glob("*.warc.gz"))
    out = tmp_path / "clean"
    args = [f"input={shared_data / 'web/warc'}/*.warc.gz", f"output={out}", "output_format=jsonl"]
    assert main(["data", "run", "--config", "data/refinedweb", *args, "progress=false"]) == 0
    markers = chunk_markers(warcs)
    assert {"7ff7", "170d", "1e31"} <= markers
    docs = [json.loads(line) for f in sorted(out.glob("*.jsonl")) for line in f.read_text().splitlines()]
    chunked_urls = {"https://amyxzhang.wordpress.com/", "https://creativecommons.org/mission/"}
    assert chunked_urls <= {d["url"] for d in docs}  # pages that were sent chunked are among those kept
    pattern = re.compile(rf"\b({'|'.join(sorted(markers))})\b")
    assert [(d["url"], m[0]) for d in docs for m in pattern.finditer(d["text"])] == []


def test_jsonl_bad_lines_and_streams(tmp_path):
    good = json.dumps({"text": "hello", "id": "a", "url": "http://x"}).encode()
    lines = [good, b"{not json", b'{"id": "n"}', b'{"text": "   "}', b'{"text": "caf\xe9"}', b"[1, 2]", good]
    (tmp_path / "mixed.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    items = read(tmp_path / "mixed.jsonl")
    assert kinds(items) == {"doc": 2, "invalid_json": 2, "missing_text": 1, "empty": 1, "invalid_encoding": 1}
    payload = gzip.compress(b"\n".join(json.dumps({"text": f"line {i}"}).encode() for i in range(20_000)))
    (tmp_path / "cut.jsonl.gz").write_bytes(payload[: len(payload) - 10])
    (tmp_path / "junk.jsonl.gz").write_bytes(b"\x1f\x8bnot really gzip at all")
    cut = kinds(read(tmp_path / "cut.jsonl.gz"))  # what came before the break is kept
    assert cut["truncated_file"] == 1 and 19_000 < cut["doc"] < 20_000
    assert kinds(read(tmp_path / "junk.jsonl.gz")) == {"bad_gzip": 1}


def json_lines(n: int) -> list[bytes]:
    words = ("alpha", "beta", "gamma", "delta", "epsilon")
    return [
        json.dumps({"text": f"line {i} " + " ".join(words[(i * j) % 5] for j in range(40))}).encode()
        for i in range(n)
    ]


def texts(items) -> list[str]:
    return [i.text for i in items if isinstance(i, Document)]


def test_jsonl_gz_keeps_every_line_before_a_gzip_error(tmp_path):
    """A damaged CRC is seen only after the last line: all 2,000 lines are intact and kept (the buffered
    reader dropped the ones it had read before the error)."""
    lines = json_lines(2000)
    data = bytearray(gzip.compress(b"\n".join(lines) + b"\n"))
    data[-6] ^= 0x04  # the CRC-32 in the gzip trailer
    (tmp_path / "crc.jsonl.gz").write_bytes(bytes(data))
    items = read(tmp_path / "crc.jsonl.gz")
    assert kinds(items) == {"doc": 2000, "bad_gzip": 1}
    assert texts(items) == [json.loads(line)["text"] for line in lines]


def test_damaged_and_truncated_zst(tmp_path):
    """A ZstdError used to stop the whole run, and a cut .zst ended quietly: both are counted now, and the
    lines decoded before the damage are kept. zstd cannot resume inside a frame, so the rest is lost."""
    import zstandard

    lines = json_lines(3000)
    want = [json.loads(line)["text"] for line in lines]
    data = zstandard.ZstdCompressor(level=3).compress(b"\n".join(lines) + b"\n")
    mid = len(data) * 3 // 4
    (tmp_path / "bad.jsonl.zst").write_bytes(
        data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 16]) + data[mid + 16 :]
    )
    (tmp_path / "cut.jsonl.zst").write_bytes(data[:mid])
    (tmp_path / "tiny.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b"\n".join(lines[:5]))[:-4])
    bad, cut = read(tmp_path / "bad.jsonl.zst"), read(tmp_path / "cut.jsonl.zst")
    assert kinds(bad)["bad_zstd"] == 1 and kinds(cut)["truncated_file"] == 1
    assert 1000 < len(texts(bad)) < 3000 and texts(bad) == want[: len(texts(bad))]
    assert 1000 < len(texts(cut)) < 3000 and texts(cut) == want[: len(texts(cut))]
    assert kinds(read(tmp_path / "tiny.jsonl.zst")) == {"truncated_file": 1}


@pytest.mark.parametrize("workers", [1, 2])
def test_damaged_zst_does_not_stop_a_run(tmp_path, workers):
    import zstandard

    src = tmp_path / "in"
    src.mkdir()
    data = zstandard.ZstdCompressor(write_checksum=True).compress(b"\n".join(json_lines(500)))
    (src / "bad.jsonl.zst").write_bytes(data[:100] + b"\xff" * 16 + data[116:])  # seen at the checksum
    (src / "good.jsonl").write_bytes(b"\n".join(json_lines(3)))
    cfg = PipelineConfig(
        input=[str(src)], output=str(tmp_path / "out"), stages=["url_filter"], workers=workers, progress=False
    )
    report = run_pipeline(cfg)
    assert report["stages"][0]["removed"] == {"bad_zstd": 1}
    assert report["documents_kept"] == 3


def test_damaged_parquet_row_group_costs_only_its_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line)["text"] for line in json_lines(400)]
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"text": rows}), path, row_group_size=100, compression="zstd")
    column = pq.ParquetFile(path).metadata.row_group(1).column(0)
    mid = column.data_page_offset + column.total_compressed_size // 2
    data = path.read_bytes()
    path.write_bytes(data[:mid] + bytes(b ^ 0x5A for b in data[mid : mid + 64]) + data[mid + 64 :])
    items = read(path)
    assert kinds(items) == {"doc": 300, "corrupt_row_group": 100}  # it used to lose the whole file
    assert texts(items) == rows[:100] + rows[200:]


def test_single_document_files(shared_data, tmp_path):
    (tmp_path / "empty.html").write_bytes(b"  \n")
    (tmp_path / "bin.html").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "big.html").write_bytes(b"<p>x</p>" * 100)
    assert kinds(read(tmp_path / "empty.html")) == {"empty": 1}
    assert kinds(read(tmp_path / "bin.html")) == {"binary": 1}
    assert kinds(read(tmp_path / "big.html", max_bytes=100)) == {"too_large": 1}
    # the one trafilatura-eval page that is not valid UTF-8: decoded with a detected charset
    (doc,) = read(shared_data / "web/trafilatura-eval/html/d618a904cff8e4f8.html.gz")
    assert doc.html and doc.id == "d618a904cff8e4f8" and "<html" in doc.text.lower()
    (tmp_path / "latin1.txt").write_bytes("Un café très spécial à Paris, où l'été dure.".encode("latin-1"))
    (text_doc,) = read(tmp_path / "latin1.txt")
    assert not text_doc.html and text_doc.text == "Un café très spécial à Paris, où l'été dure."


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "jsonl.zst", "parquet"])
def test_writers_round_trip(tmp_path, fmt):
    docs = [
        Document(text=f"text {i} é", id=str(i), url=f"http://x/{i}", metadata={"language": "en"})
        for i in range(5)
    ]
    path = tmp_path / f"00000.{fmt}"
    with DocumentWriter(path, fmt) as w:
        for d in docs:
            w.write(d)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left beside it
    back = read(path)
    assert [(d.text, d.id, d.url, d.metadata) for d in back] == [
        (d.text, d.id, d.url, d.metadata) for d in docs
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.zst", "parquet"])
def test_writer_leaves_nothing_on_error(tmp_path, fmt):
    path = tmp_path / f"00000.{fmt}"
    with pytest.raises(RuntimeError), DocumentWriter(path, fmt) as w:
        w.write(Document(text="x", id="1"))
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_writer_adds_fields_to_every_record(tmp_path):
    """What the dropped-document files hold: stage and reason beside the document (Parquet columns too)."""
    import pyarrow.parquet as pq

    for fmt in ("jsonl", "parquet"):
        with DocumentWriter(tmp_path / f"x.{fmt}", fmt, fields=("stage", "reason")) as w:
            w.write(Document(text="t", id="1", metadata={"a": 1}), stage="c4", reason="curly_bracket")
    doc = {"text": "t", "id": "1", "url": "", "stage": "c4", "reason": "curly_bracket"}
    assert json.loads((tmp_path / "x.jsonl").read_text()) == {**doc, "metadata": {"a": 1}}
    assert pq.read_table(tmp_path / "x.parquet").to_pylist() == [{**doc, "metadata": '{"a": 1}'}]


def test_corrupt_parquet(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"PAR1 definitely not parquet")
    assert kinds(read(tmp_path / "x.parquet")) == {"unreadable_file": 1}


def test_discover_and_shards(shared_data, tmp_path):
    web = shared_data / "web"
    files = discover([str(web / "warc"), str(web / "ccnet-docs/*.jsonl.gz")])
    assert [f.name for f in files] == [
        "cc_en_head-0091.jsonl.gz",
        "cc_en_head-0174.jsonl.gz",
        "cc-sample-resiliparse.warc.gz",
        "dolma-sample-0000.warc.gz",
        "dolma-sample-0001.warc.gz",
    ]
    html = discover([str(web / "trafilatura-eval/html")])
    shards = make_shards(html + files, ReaderConfig(files_per_shard=100))
    assert [len(s) for s in shards] == [100, 100, 1, 1, 1, 1, 1, 25]  # full groups as they fill
    with pytest.raises(LmforgeError, match="does not exist"):
        discover([str(tmp_path / "nope")])
    with pytest.raises(LmforgeError, match="matches no file"):
        discover([str(tmp_path / "*.warc.gz")])
    (tmp_path / "notes.docx").write_bytes(b"x")
    with pytest.raises(LmforgeError, match="unknown format"):
        discover([str(tmp_path / "notes.docx")])


def test_bad_files_are_counted_not_fatal(shared_data, tmp_path):
    """A folder of good and broken inputs runs through; every broken record shows up under its reason."""
    src = tmp_path / "in"
    src.mkdir()
    data = (shared_data / "web/warc/dolma-sample-0001.warc.gz").read_bytes()
    (src / "good.warc.gz").write_bytes(data)
    (src / "cut.warc.gz").write_bytes(data[: len(data) // 3])
    (src / "junk.jsonl.gz").write_bytes(b"\x1f\x8b garbage")
    (src / "bin.html").write_bytes(b"\x00\x01\x02" * 50)
    (src / "lines.jsonl").write_bytes(b'{"text": "ok then"}\n{broken\n')
    cfg = load_data_config("data/fineweb", [f"input={src}", f"output={tmp_path / 'out'}", "progress=false"])
    report = run_pipeline(cfg)
    read_stats = report["stages"][0]
    assert read_stats["removed"] == {"binary": 1, "bad_gzip": 1, "invalid_json": 1, "truncated_record": 1}
    before_cut = kinds(read(src / "cut.warc.gz"))["doc"]
    assert before_cut > 0
    assert read_stats["docs_out"] == 15 + before_cut + 1  # the good file, records before the cut, one line
    assert report["documents_kept"] > 0


def test_missing_input_fails_before_work(tmp_path):
    cfg = load_data_config(
        "data/refinedweb", [f"input={tmp_path / 'crawl'}/*.warc.gz", f"output={tmp_path / 'o'}"]
    )
    with pytest.raises(LmforgeError, match="matches no file"):
        run_pipeline(cfg)
    assert not (tmp_path / "o").exists()


def test_bad_configs_name_the_problem(tmp_path, shared_data):
    base = [f"input={shared_data / 'web/warc'}", f"output={tmp_path / 'o'}"]
    with pytest.raises(ConfigError, match=r"unknown config key worker .*valid keys: .*workers"):
        load_data_config("data/refinedweb", [*base, "worker=2"])
    with pytest.raises(
        ConfigError, match=r"unknown config key stages\[2\]\.language\.treshold .*valid keys: .*threshold"
    ):
        run_pipeline(load_data_config("data/refinedweb", [*base, "stage.language.treshold=0.5"]))
    with pytest.raises(ConfigError, match="expected a number"):
        run_pipeline(load_data_config("data/refinedweb", [*base, "stage.language.threshold=high"]))
    with pytest.raises(ConfigError, match="unknown stage 'langid'"):
        run_pipeline(PipelineConfig(input=base[0][6:].split(), output=str(tmp_path / "o"), stages=["langid"]))
    with pytest.raises(ConfigError, match="not in stages"):
        run_pipeline(load_data_config("data/fineweb", [*base, "skip=[exact_substring]"]))
    with pytest.raises(LmforgeError, match=r"nope\.txt' not found"):
        run_pipeline(load_data_config("data/fineweb", [*base, "stage.url_filter.blocklist_file=nope.txt"]))
    with pytest.raises(ConfigError, match="input is not set"):
        run_pipeline(load_data_config("data/fineweb", [f"output={tmp_path / 'o'}"]))
    assert not (tmp_path / "o").exists()


def test_cli_reports_config_errors_cleanly(tmp_path, capsys):
    from lmforge.cli import main

    assert main(["data", "run", "input=/does/not/exist", f"output={tmp_path}/o"]) == 2
    assert "input '/does/not/exist' does not exist" in capsys.readouterr().err
