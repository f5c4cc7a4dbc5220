"""Inputs of ``tokenizer train`` and ``shards``: one reading policy for damage (skipped, counted, reported
at the end, never a traceback) and files read by content when their extension is unknown."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.tokenizer.core import Tokenizer
from lmforge.tokenizer.shards import TokenShards
from lmforge.tokenizer.sources import ReadLog, iter_corpus, list_inputs

FRENCH = "Le café est très bon. Où est la gare ? Ça va, à bientôt, mon ami."
WIKI = " = Valkyria Chronicles III = \n\n Senjō no Valkyria 3 is a tactical role @-@ playing game .\n"


def read(paths: list[Path], text_key: str = "text") -> tuple[list[str], ReadLog]:
    log = ReadLog()
    return list(iter_corpus(list_inputs([str(p) for p in paths]), text_key, log)), log


def jsonl(texts: list[str]) -> bytes:
    return b"".join(json.dumps({"text": t}).encode() + b"\n" for t in texts)


def cut_in_half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def write_binary(path: Path) -> Path:
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    return path


def test_latin1_text_is_read_in_its_charset(tmp_path, capsys):
    (tmp_path / "fr.txt").write_bytes(FRENCH.encode("latin-1"))
    docs, log = read([tmp_path / "fr.txt"])
    assert docs == [FRENCH]
    assert log.repaired == {"charset_guessed": 1} and not log.skipped
    assert f"{tmp_path / 'fr.txt'} (cp1252)" in capsys.readouterr().err  # the report says what was assumed


def test_damaged_utf8_keeps_its_text(tmp_path):
    """A stray byte in a UTF-8 file is one U+FFFD, not a reason to read the whole file in another charset."""
    (tmp_path / "zh.txt").write_bytes("中文分词测试。".encode() * 5 + b"\xff" + "你好".encode())
    docs, log = read([tmp_path / "zh.txt"])
    assert docs == ["中文分词测试。" * 5 + "\ufffd你好"]
    assert log.repaired == {"invalid_utf8_replaced": 1}


@pytest.mark.parametrize("suffix", ["gz", "zst"])
def test_truncated_jsonl_keeps_the_complete_lines(tmp_path, capsys, suffix):
    import zstandard

    texts = [f"document {i}: {i * 7919 % 104729} is a number" for i in range(20_000)]
    compress = gzip.compress if suffix == "gz" else zstandard.ZstdCompressor().compress
    path = tmp_path / f"cut.jsonl.{suffix}"
    path.write_bytes(cut_in_half(compress(jsonl(texts))))
    docs, log = read([path])
    assert 0 < len(docs) < len(texts) and docs == texts[: len(docs)]
    assert log.skipped == {"truncated_file": 1}
    where = f"{path}:{len(docs) + 1}"  # the line the stream breaks in
    assert log.examples["truncated_file"] == [where]
    assert f"skipped: 1 truncated_file: {where}" in capsys.readouterr().err


def test_damaged_records_are_skipped_and_named(tmp_path):
    lines = [b'{"text": "kept"}', b"{not json", b'{"text": "caf\xe9"}', b'{"id": 3}', b'{"text": ""}', b"[1]"]
    (tmp_path / "mixed.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    docs, log = read([tmp_path / "mixed.jsonl"])
    assert docs == ["kept"]
    assert log.skipped == {"invalid_json": 2, "invalid_encoding": 1, "missing_text": 1, "empty": 1}
    assert log.examples["invalid_json"] == [f"{tmp_path / 'mixed.jsonl'}:{n}" for n in (2, 6)]


def test_damaged_parquet_keeps_the_other_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a row", None, "another row"]}), tmp_path / "good.parquet")
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(500)]}), tmp_path / "whole.parquet")
    (tmp_path / "cut.parquet").write_bytes(cut_in_half((tmp_path / "whole.parquet").read_bytes()))
    docs, log = read([tmp_path / "good.parquet", tmp_path / "cut.parquet"])
    assert docs == ["a row", "another row"]
    assert log.skipped == {"missing_text": 1, "unreadable_file": 1}


def test_nothing_readable_is_an_error_that_says_why(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(jsonl(["one", "two"]))
    with pytest.raises(LmforgeError, match=r"(?s)no documents: .*2 missing_body: .*a\.jsonl:1"):
        read([tmp_path / "a.jsonl"], text_key="body")


def test_unknown_extension_is_read_by_content(tmp_path, capsys):
    (tmp_path / "wiki.test.raw").write_text(WIKI, encoding="utf-8")
    (tmp_path / "docs.dump").write_bytes(jsonl(["sniffed", "json lines"]))
    (tmp_path / "wiki.raw.gz").write_bytes(gzip.compress(WIKI.encode()))
    docs, log = read([tmp_path / "wiki.test.raw", tmp_path / "docs.dump", tmp_path / "wiki.raw.gz"])
    assert docs == [WIKI, "sniffed", "json lines", WIKI]
    assert not log.skipped
    err = capsys.readouterr().err
    assert f"{tmp_path / 'wiki.test.raw'}: no known extension, read as plain text" in err
    assert f"{tmp_path / 'docs.dump'}: no known extension, read as JSON lines" in err
    assert f"{tmp_path / 'wiki.raw.gz'}: no known extension, read as gzip-compressed plain text" in err


def test_binary_file_with_an_odd_extension_is_refused(tmp_path):
    path = write_binary(tmp_path / "weights.dat")
    with pytest.raises(LmforgeError, match=rf"{path}: binary data"):
        list_inputs([str(path)])


def test_cli_reads_damaged_and_unknown_inputs(tmp_path, bpe_tokenizer, capsys):
    (tmp_path / "fr.txt").write_bytes(FRENCH.encode("latin-1"))
    (tmp_path / "wiki.test.raw").write_text(WIKI, encoding="utf-8")
    texts = [f"line {i} of a long file" for i in range(20_000)]
    (tmp_path / "cut.jsonl.gz").write_bytes(cut_in_half(gzip.compress(jsonl(texts))))
    inputs = ["--input", *(str(tmp_path / n) for n in ("fr.txt", "wiki.test.raw", "cut.jsonl.gz"))]

    tok = tmp_path / "tok"
    assert main(["tokenizer", "train", *inputs, "--kind", "char", "--out", str(tok)]) == 0
    assert Tokenizer.load(tok).decode(Tokenizer.load(tok).encode("café ō")) == "café ō"  # no <unk>
    bpe_tokenizer.save(tmp_path / "bpe")
    args = ["shards", *inputs, "--tokenizer", str(tmp_path / "bpe"), "--out", str(tmp_path / "s")]
    assert main([*args, "--val-fraction", "0", "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert "wiki.test.raw: no known extension, read as plain text" in err
    assert "skipped: 1 truncated_file: " in err and "cut.jsonl.gz:" in err
    assert 2 < TokenShards(tmp_path / "s").index["documents"] < 2 + len(texts)

    args = ["tokenizer", "train", "--input", str(write_binary(tmp_path / "blob.bin")), "--out", str(tok)]
    assert main(args) == 2
    assert "blob.bin: binary data" in capsys.readouterr().err
