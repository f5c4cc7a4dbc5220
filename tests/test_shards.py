"""Token shards and the window loader: exact content, dtype, split, determinism, rank sharding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import corpus_text
from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.tokenizer.shards import TokenShards, build_shards, sequential_windows, split_point, token_dtype
from lmforge.tokenizer.sources import iter_corpus, list_inputs
from lmforge.tokenizer.train import train_char
from lmforge.train.data import WindowSampler


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return [p for p in corpus_text()[:120_000].split("\n\n") if p.strip()]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, docs, bpe_tokenizer) -> TokenShards:
    out = tmp_path_factory.mktemp("shards") / "s"
    build_shards(docs, bpe_tokenizer, out, val_fraction=0.1, workers=1, shard_tokens=7_000, progress=False)
    return TokenShards(out)


def test_shards_hold_every_document_then_eos(shards, docs, bpe_tokenizer):
    index = shards.index
    assert index["dtype"] == "uint16" and index["documents"] == len(docs)
    assert len(index["files"]) > 1  # shard_tokens forced several files
    stream = np.concatenate([shards.file(i) for i in range(len(index["files"]))])
    expected = [t for d in docs for t in (*bpe_tokenizer.encode(d), bpe_tokenizer.eos_id)]
    assert stream.tolist() == expected
    assert index["tokens"] == len(expected)
    # The split covers the stream exactly, val is the tail (~10 %) and starts on a document boundary.
    train, val = shards.split_tokens("train"), shards.split_tokens("val")
    assert train + val == len(expected) and 0.08 < val / len(expected) < 0.12
    first_val_file, first_val_pos, _ = shards.ranges("val")[0]
    assert shards.file(first_val_file)[first_val_pos - 1] == bpe_tokenizer.eos_id


def test_parallel_workers_write_identical_shards(tmp_path, shards, docs, bpe_tokenizer):
    out = tmp_path / "par"
    build_shards(docs, bpe_tokenizer, out, val_fraction=0.1, workers=2, shard_tokens=7_000, progress=False)
    par = TokenShards(out)
    assert par.index == shards.index
    for i in range(len(par.index["files"])):
        assert np.array_equal(par.file(i), shards.file(i))


def test_dtype_and_split_point():
    assert token_dtype(65_536) == np.uint16 and token_dtype(65_537) == np.uint32
    ends = np.array([10, 50, 90, 100])
    assert split_point(ends, 100, 0.2) == 90  # the next document boundary at or after 80
    assert split_point(np.array([100]), 100, 0.1) == 90  # one long document: cut exactly
    assert split_point(ends, 100, 0.0) == 100


def test_uint32_shards_for_a_large_vocabulary(tmp_path, bpe_tokenizer):
    big = train_char(["ab"], extra_special_tokens=[f"<|x{i}|>" for i in range(70_000)])
    build_shards(["abba", "ba"], big, tmp_path / "s", val_fraction=0.0, progress=False)
    s = TokenShards(tmp_path / "s")
    assert s.dtype == np.uint32 and s.vocab_size > 65_536
    a, b = big.encode("a")[0], big.encode("b")[0]
    assert s.file(0).tolist() == [a, b, b, a, big.eos_id, b, a, big.eos_id]


def test_windows_are_deterministic_and_split_across_ranks(shards):
    full = WindowSampler(shards, "train", 32, global_batch=8, seed=7)
    x, y = full.batch(3)
    assert x.shape == (8, 32) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are inputs shifted by one
    x2, _ = WindowSampler(shards, "train", 32, global_batch=8, seed=7).batch(3)
    assert torch.equal(x, x2)  # same seed and step: same batch, whatever came before
    assert not torch.equal(x, full.batch(4)[0]) and not torch.equal(
        x, WindowSampler(shards, "train", 32, 8, seed=8).batch(3)[0]
    )
    parts = [WindowSampler(shards, "train", 32, 8, seed=7, rank=r, world_size=2).batch(3)[0] for r in (0, 1)]
    assert torch.equal(torch.cat(parts), x)  # ranks split the global batch
    # Every training window lies inside the train split.
    val_file, val_start, _ = shards.ranges("val")[0]
    stream = np.concatenate([shards.file(i) for i in range(len(shards.index["files"]))])
    offset = sum(f["tokens"] for f in shards.index["files"][:val_file]) + val_start
    train_text = stream[:offset].tobytes()
    assert all(row.numpy().astype(np.uint16).tobytes() in train_text for row in x)


def test_sequential_windows_cover_the_split(shards):
    windows = list(sequential_windows(shards, "val", 16))
    assert all(len(w) == 17 for w in windows)
    n = sum(max(0, (e - s - 1) // 16) for _, s, e in shards.ranges("val"))
    assert len(windows) == n
    halves = [list(sequential_windows(shards, "val", 16, rank=r, world_size=2)) for r in (0, 1)]
    assert len(halves[0]) + len(halves[1]) == n


def test_too_short_split_is_a_clear_error(shards):
    with pytest.raises(LmforgeError, match="no stretch of 100001 tokens"):
        WindowSampler(shards, "val", 100_000, 4, seed=0)


def test_cli_builds_shards(tmp_path, bpe_tokenizer, capsys):
    bpe_tokenizer.save(tmp_path / "tok")
    lines = [json.dumps({"text": t}) for t in ("one document", "another one", "中文")]
    (tmp_path / "c.jsonl").write_text("\n".join(lines), encoding="utf-8")
    args = ["shards", "--input", str(tmp_path / "c.jsonl"), "--tokenizer", str(tmp_path / "tok")]
    assert main([*args, "--out", str(tmp_path / "s"), "--val-fraction", "0.3", "--workers", "2"]) == 0
    assert "3 documents" in capsys.readouterr().out
    s = TokenShards(tmp_path / "s")
    assert s.tokenizer().encode("中文") == bpe_tokenizer.encode("中文")
    assert s.split_tokens("val") > 0


@pytest.mark.parametrize("fmt", ["jsonl.zst", "jsonl.gz", "parquet"])
def test_shards_read_an_lmforge_data_output_folder(tmp_path, bpe_tokenizer, fmt):
    """`lmforge data run` output (zst/gz JSONL or Parquet, plus its report and work files) -> shards."""
    from lmforge.data.config import PipelineConfig
    from lmforge.data.run import run_pipeline

    texts = [f"document number {i} says something different about topic {i * 7}." for i in range(40)]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
    clean = tmp_path / "clean"
    cfg = PipelineConfig(input=[str(src)], output=str(clean), output_format=fmt, stages=[{"exact_dedup": {}}])
    cfg.progress = False
    run_pipeline(cfg)
    assert (clean / "summary.md").is_file() and (clean / "_work").is_dir()
    files = list_inputs([str(clean)])
    assert files and all(fmt.split(".")[0] in f.name for f in files)
    assert sorted(iter_corpus(files)) == sorted(texts)
    build_shards(iter_corpus(files), bpe_tokenizer, tmp_path / "s", val_fraction=0.0, progress=False)
    shards = TokenShards(tmp_path / "s")
    assert shards.split_tokens("train") == sum(len(bpe_tokenizer.encode(t)) + 1 for t in texts)
