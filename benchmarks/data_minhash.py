"""Benchmark MinHash signatures: lmforge's vectorised kernel against ``datasketch`` for the same number of
permutations, on the same real article texts and the same word 5-gram shingles.

    python benchmarks/data_minhash.py [--repeats 3] [--out benchmarks/data_minhash.json]

Both sides start from the normalised text. datasketch: build the 5-gram strings, ``MinHash(num_perm)``,
``update_batch`` (sha1 per shingle, then its numpy permutations). lmforge: ``batch_ngram_hashes`` and
``signatures`` per batch of 256 documents. The whole LSH stage (signatures, band files, pairs, clusters) is
timed too, through ``lmforge data run`` with only the minhash stage.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from _report import machine, summary  # this folder is on sys.path when a benchmark runs
from data_pipeline import SHARED


def load_texts() -> list[str]:
    web = SHARED / "data/web"
    gt = json.loads((web / "article-extraction-benchmark/ground-truth.json").read_text())
    return [v["articleBody"] for _, v in sorted(gt.items())]


def ours(norm: list[str], num_perm: int) -> float:
    from lmforge.data.dedup.hashing import batch_ngram_hashes, permutations, signatures

    a = permutations(num_perm, seed=1)
    t0 = time.perf_counter()
    for i in range(0, len(norm), 256):
        signatures(*batch_ngram_hashes(norm[i : i + 256], 5), a)
    return time.perf_counter() - t0


def theirs(norm: list[str], num_perm: int) -> float:
    from datasketch import MinHash

    t0 = time.perf_counter()
    for t in norm:
        w = t.split(" ")
        m = MinHash(num_perm=num_perm, seed=1)
        m.update_batch([" ".join(w[i : i + 5]).encode("utf-8") for i in range(len(w) - 4)])
    return time.perf_counter() - t0


def lsh_stage(texts: list[str], bands: int, rows: int, tmp: Path) -> float:
    from lmforge.data.config import PipelineConfig
    from lmforge.data.run import run_pipeline

    src = tmp / "in.jsonl"
    if not src.exists():
        with open(src, "w") as f:
            for i, t in enumerate(texts):
                f.write(json.dumps({"id": str(i), "text": t}) + "\n")
    out = tmp / f"out-{bands}x{rows}-{time.time()}"
    cfg = PipelineConfig(
        input=[str(src)], output=str(out), stages=[{"minhash": {"bands": bands, "rows": rows}}]
    )
    cfg.progress = False
    t0 = time.perf_counter()
    run_pipeline(cfg)
    return time.perf_counter() - t0


def main() -> None:
    from lmforge.data.text import normalize_for_dedup

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--copies", type=int, default=5, help="repeat the 181 articles to get a bigger batch")
    ap.add_argument("--out", default=str(Path(__file__).with_name("data_minhash.json")))
    args = ap.parse_args()
    texts = load_texts() * args.copies
    norm = [normalize_for_dedup(t) for t in texts]
    shingles = sum(max(0, len(t.split(" ")) - 4) for t in norm)
    print(f"{len(norm)} documents, {shingles:,} shingles, {os.cpu_count()} CPUs")
    results = {}
    for num_perm in (112, 256, 9000):
        mine = [len(norm) / ours(norm, num_perm) for _ in range(args.repeats)]
        n_ref = norm if num_perm < 9000 else norm[:200]  # datasketch at 9000 permutations is slow
        ref = [len(n_ref) / theirs(n_ref, num_perm) for _ in range(args.repeats)]
        row = {"lmforge_docs_per_s": summary(mine), "datasketch_docs_per_s": summary(ref)}
        row["speedup"] = round(statistics.median(mine) / statistics.median(ref), 1)
        row["lmforge_hashes_per_s"] = round(statistics.median(mine) * shingles / len(norm) * num_perm)
        results[str(num_perm)] = row
        print(f"num_perm={num_perm}: docs/s lmforge {row['lmforge_docs_per_s']}")
        print(f"  datasketch {row['datasketch_docs_per_s']}")
        print(f"  speedup {row['speedup']}x")
    stage = {}
    with tempfile.TemporaryDirectory() as tmp:
        for bands, rows in ((14, 8), (450, 20)):
            secs = [lsh_stage(texts, bands, rows, Path(tmp)) for _ in range(args.repeats)]
            docs = [len(texts) / s for s in secs]
            stage[f"{bands}x{rows}"] = summary(docs)
            print(f"minhash stage {bands}x{rows} (data run, 1 worker): {stage[f'{bands}x{rows}']} docs/s")
    out = {
        "machine": machine(),
        "documents": len(norm),
        "shingles": shingles,
        "signatures": results,
        "minhash_stage_docs_per_s": stage,
    }
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
