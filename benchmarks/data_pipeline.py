"""Benchmark ``lmforge data`` on real web pages: documents/s per stage and for the whole pipeline, with each
extract engine (trafilatura, resiliparse), side by side with datatrove running the same stages in the same
run, and scaling from 1 to 2 workers.

    python benchmarks/data_pipeline.py [--repeats 3] [--parts compare,scaling] [--out FILE.json]

Pages: the 406 HTML pages of ``<shared>/data/web`` (trafilatura-eval and the article-extraction benchmark),
with their URLs. Stages compared (everything both can run offline): URL filter, extraction (datatrove:
trafilatura with FineWeb's settings, its only HTML extractor), Gopher repetition, Gopher quality, C4
(FineWeb's settings), FineWeb filters. Language ID is timed for lmforge only: datatrove downloads
lid.176.bin at run time. ``lmforge data run`` (the same stages plus language ID, reading and writing shards)
is timed in the same repeats. Needs the bench extras (datatrove, spacy for datatrove's word tokenizer,
pyahocorasick/tldextract/fasteners for its URL filter).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from _report import machine, summary  # this folder is on sys.path when a benchmark runs

SHARED = Path(os.environ.get("LMFORGE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
STAGES = ["url_filter", "extract", "gopher_repetition", "gopher_quality", "c4", "fineweb"]
ENGINES = {"trafilatura": "lmforge", "resiliparse": "lmforge_resiliparse"}  # engine -> its column
ALL = "all (in-process)"


def cpu_model() -> str:
    """The CPU's name, which ``platform`` reduces to x86_64 on Linux."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    names = [ln.partition(":")[2].strip() for ln in lines if ln.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def load_pages() -> list[dict]:
    """(id, url, html) of every benchmark page, decoded the way the lmforge reader does."""
    from lmforge.data.readers import decode

    web = SHARED / "data/web"
    pages = []
    for url, e in json.loads((web / "trafilatura-eval/evaldata.json").read_text()).items():
        pages.append((url, web / "trafilatura-eval" / e["file"]))
    for key, e in json.loads((web / "article-extraction-benchmark/ground-truth.json").read_text()).items():
        pages.append((e["url"], web / "article-extraction-benchmark/html" / f"{key}.html.gz"))
    out = []
    for i, (url, path) in enumerate(sorted(pages)):
        text = decode(gzip.decompress(path.read_bytes()))
        if isinstance(text, str):
            out.append({"id": f"p{i:04d}", "url": url, "text": text})
    return out


def ours(stage_names: list[str], engine: str = "trafilatura"):
    from lmforge.config import from_dict
    from lmforge.data.stages import DOC_STAGES

    params = {"c4": {"filter_no_terminal_punct": False}, "extract": {"timeout": 10.0, "engine": engine}}
    return [DOC_STAGES[n][1](from_dict(DOC_STAGES[n][0], params.get(n, {}))) for n in stage_names]


def theirs():
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
        URLFilter,
    )

    return [
        URLFilter(),
        Trafilatura(favour_precision=True, timeout=10.0),
        GopherRepetitionFilter(),
        GopherQualityFilter(),
        C4QualityFilter(filter_no_terminal_punct=False),
        FineWebQualityFilter(),
    ]


def time_ours(pages: list[dict], stage_names: list[str], engine: str = "trafilatura") -> dict[str, dict]:
    from lmforge.data.document import Document
    from lmforge.data.stages.extract import reset_extractor_state

    reset_extractor_state()
    stages = ours(stage_names, engine)
    docs = [Document(text=p["text"], id=p["id"], url=p["url"], html=True) for p in pages]
    out = {}
    for name, stage in zip(stage_names, stages):
        t0 = time.perf_counter()
        kept = [d for d in docs if stage(d) is None]
        out[name] = {"docs": len(docs), "kept": len(kept), "seconds": time.perf_counter() - t0}
        docs = kept
    return out


def time_theirs(pages: list[dict]) -> dict[str, dict]:
    from datatrove.data import Document

    docs = [Document(text=p["text"], id=p["id"], metadata={"url": p["url"]}) for p in pages]
    out = {}
    for name, step in zip(STAGES, theirs()):
        warm = [Document(text=p["text"], id=p["id"], metadata={"url": p["url"]}) for p in pages[:3]]
        list(
            step.run(iter(warm), rank=0, world_size=1)
        )  # lazy loads (block lists, spaCy) are not per-doc cost
        t0 = time.perf_counter()
        kept = list(step.run(iter(docs), rank=0, world_size=1))
        out[name] = {"docs": len(docs), "kept": len(kept), "seconds": time.perf_counter() - t0}
        docs = kept
    return out


def whole_pipeline(
    pages: list[dict], workers: int, tmp: Path, tag: str, engine: str = "trafilatura"
) -> float:
    """Seconds of ``lmforge data run`` (FineWeb filters + LID, no dedup) over the pages in 8 JSONL shards."""
    from lmforge.data.config import PipelineConfig
    from lmforge.data.run import run_pipeline

    src = tmp / "in"
    if not src.exists():
        src.mkdir()
        for s in range(8):
            with open(src / f"{s}.jsonl", "w") as f:
                for p in pages[s::8]:
                    f.write(json.dumps(p) + "\n")
    extract = {"extract": {"timeout": 10.0, "engine": engine}}
    stages = [{"url_filter": {}}, extract, {"language": {}}, {"gopher_repetition": {}}]
    stages += [{"gopher_quality": {}}, {"c4": {"filter_no_terminal_punct": False}}, {"fineweb": {}}]
    cfg = PipelineConfig(
        input=[str(src)], output=str(tmp / tag), stages=stages, workers=workers, progress=False
    )
    cfg.reader.html = True
    t0 = time.perf_counter()
    run_pipeline(cfg)
    return time.perf_counter() - t0


def compare(pages: list[dict], repeats: int) -> dict:
    """Per-stage documents/s of lmforge (each engine) and datatrove on the same pages, one process each, and
    ``lmforge data run`` with one worker; all in every repeat, so load changes hit every column alike."""
    n = len(pages)
    columns = [*ENGINES.values(), "datatrove"]
    per_stage: dict[str, dict[str, list[float]]] = {s: {c: [] for c in columns} for s in [*STAGES, ALL]}
    data_run: dict[str, list[float]] = {c: [] for c in ENGINES.values()}
    lid: list[float] = []
    kept: dict[str, dict[str, int]] = {s: {} for s in STAGES}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            runs = {c: time_ours(pages, STAGES, engine) for engine, c in ENGINES.items()}
            runs["datatrove"] = time_theirs(pages)
            for c, run in runs.items():
                for s in STAGES:
                    per_stage[s][c].append(run[s]["docs"] / run[s]["seconds"])
                    kept[s][c] = run[s]["kept"]
                per_stage[ALL][c].append(n / sum(run[s]["seconds"] for s in STAGES))
            for engine, c in ENGINES.items():
                data_run[c].append(n / whole_pipeline(pages, 1, Path(tmp), f"{engine}-{r}", engine))
            lid_run = time_ours(pages, ["extract", "language"])["language"]
            lid.append(lid_run["docs"] / lid_run["seconds"])
            print(f"repeat {r}: in-process docs/s", {c: round(v[-1], 1) for c, v in per_stage[ALL].items()})
    docs_per_second = {s: speedups({c: summary(v) for c, v in d.items()}) for s, d in per_stage.items()}
    print_table(docs_per_second)
    whole = speedups(
        {c: summary(v) for c, v in data_run.items()} | {"datatrove": docs_per_second[ALL]["datatrove"]}
    )
    print(f"lmforge data run, 1 worker (+ language ID, read/write) vs datatrove in-process: {whole}")
    print(f"language id (lmforge only): {summary(lid)} docs/s")
    return {
        "docs_per_second": docs_per_second,
        "data_run_1_worker_vs_datatrove_in_process": whole,
        "kept_after_stage": kept,
        "language_id_docs_per_second": summary(lid),
        "compare_machine": machine(),
    }


def speedups(row: dict[str, dict[str, float]]) -> dict:
    """Each lmforge column's median over datatrove's: ``speedup`` (trafilatura), ``speedup_resiliparse``."""
    base = row["datatrove"]["median"]
    return row | {
        "speedup" + c.removeprefix("lmforge"): round(row[c]["median"] / base, 2) for c in ENGINES.values()
    }


def print_table(docs_per_second: dict[str, dict]) -> None:
    cell = lambda x: f"{x['median']:>9} [{x['min']}-{x['max']}]"  # noqa: E731
    print(
        f"\n{'stage':<18}{'lmforge trafilatura':>28}{'lmforge resiliparse':>28}{'datatrove':>28}   speedups"
    )
    for s, d in docs_per_second.items():
        cells = "".join(f"{cell(d[c]):>28}" for c in [*ENGINES.values(), "datatrove"])
        print(f"{s:<18}{cells}   {d['speedup']}x / {d['speedup_resiliparse']}x")


def scaling(pages: list[dict], repeats: int) -> dict:
    """``lmforge data run`` with 1 and 2 workers, alternating, on the same 8 shards, with each engine."""
    runs: dict[str, dict[int, list[float]]] = {e: {1: [], 2: []} for e in ENGINES}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for engine, by_workers in runs.items():
                for w, v in by_workers.items():
                    v.append(len(pages) / whole_pipeline(pages, w, Path(tmp), f"{engine}-w{w}-{r}", engine))
    out = {
        "whole_pipeline_docs_per_second": {
            e: {f"{w}_workers": summary(v) for w, v in by_workers.items()} for e, by_workers in runs.items()
        },
        "scaling_2_vs_1": {
            e: round(statistics.median(v[2]) / statistics.median(v[1]), 2) for e, v in runs.items()
        },
        "scaling_machine": machine(),
    }
    for e, by_workers in out["whole_pipeline_docs_per_second"].items():
        print(f"whole pipeline (lmforge data run, FineWeb filters + LID), {e}: {by_workers} docs/s")
    print(f"scaling 1 -> 2 workers: {out['scaling_2_vs_1']}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--parts", default="compare,scaling", help="compare, scaling or both (results are merged)"
    )
    ap.add_argument("--out", default=str(Path(__file__).with_name("data_pipeline.json")))
    args = ap.parse_args()
    pages = load_pages()
    mb = sum(len(p["text"]) for p in pages) / 1e6
    print(f"{len(pages)} pages, {mb:.1f} MB of HTML, {os.cpu_count()} CPUs")
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {}
    result.update(
        {"pages": len(pages), "repeats": args.repeats, "cpu": cpu_model(), "machine_at_start": machine()}
    )
    if "compare" in args.parts:
        result.update(compare(pages, args.repeats))
    if "scaling" in args.parts:
        result.update(scaling(pages, args.repeats))
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
