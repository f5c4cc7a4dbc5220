"""Readers and writers, bad input (skipped and counted under a named reason, never a crash) and errors that
must stop a run before any work starts."""

from __future__ import annotations

import gzip
import json
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
    assert kinds(read(tmp_path / "bad.warc.gz")) == {"doc": 13, "corrupt_record": 1}
    assert kinds(read(tmp_path / "junk.warc.gz")) == {"corrupt_record": 1}


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
