"""Benchmark ``lmforge data`` on real web pages: documents/s per stage and for the whole pipeline, side by
side with datatrove running the same stages, and scaling from 1 to 2 workers.

    python benchmarks/data_pipeline.py [--repeats 3] [--out benchmarks/data_pipeline.json]

Pages: the 406 HTML pages of ``<shared>/data/web`` (trafilatura-eval and the article-extraction benchmark),
with their URLs. Stages compared (everything both can run offline): URL filter, trafilatura (FineWeb's
settings), Gopher repetition, Gopher quality, C4 (FineWeb's settings), FineWeb filters. Language ID is
timed for lmforge only: datatrove downloads lid.176.bin at run time. Needs the dev extras (datatrove, spacy
for datatrove's word tokenizer, pyahocorasick/tldextract/fasteners for its URL filter).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from _report import machine, summary  # this folder is on sys.path when a benchmark runs

SHARED = Path(os.environ.get("LMFORGE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
STAGES = ["url_filter", "extract", "gopher_repetition", "gopher_quality", "c4", "fineweb"]


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


def ours(stage_names: list[str]):
    from lmforge.config import from_dict
    from lmforge.data.stages import DOC_STAGES

    params = {"c4": {"filter_no_terminal_punct": False}, "extract": {"timeout": 10.0}}
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


def time_ours(pages: list[dict], stage_names: list[str]) -> dict[str, dict]:
    from lmforge.data.document import Document
    from lmforge.data.stages.extract import reset_extractor_state

    reset_extractor_state()
    stages = ours(stage_names)
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


def whole_pipeline(pages: list[dict], workers: int, tmp: Path, tag: str) -> float:
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
    stages = [{"url_filter": {}}, {"extract": {"timeout": 10.0}}, {"language": {}}, {"gopher_repetition": {}}]
    stages += [{"gopher_quality": {}}, {"c4": {"filter_no_terminal_punct": False}}, {"fineweb": {}}]
    cfg = PipelineConfig(
        input=[str(src)], output=str(tmp / tag), stages=stages, workers=workers, progress=False
    )
    cfg.reader.html = True
    t0 = time.perf_counter()
    run_pipeline(cfg)
    return time.perf_counter() - t0


def compare(pages: list[dict], repeats: int) -> dict:
    """Per-stage documents/s of lmforge and datatrove on the same pages, one process each."""
    n = len(pages)
    per_stage: dict[str, dict[str, list[float]]] = {s: {"lmforge": [], "datatrove": []} for s in STAGES}
    per_stage["all (in-process)"] = {"lmforge": [], "datatrove": []}
    lid: list[float] = []
    kept: dict[str, dict[str, int]] = {}
    for r in range(repeats):
        mine, dt = time_ours(pages, STAGES), time_theirs(pages)
        for s in STAGES:
            per_stage[s]["lmforge"].append(mine[s]["docs"] / mine[s]["seconds"])
            per_stage[s]["datatrove"].append(dt[s]["docs"] / dt[s]["seconds"])
            kept[s] = {"lmforge": mine[s]["kept"], "datatrove": dt[s]["kept"]}
        per_stage["all (in-process)"]["lmforge"].append(n / sum(mine[s]["seconds"] for s in STAGES))
        per_stage["all (in-process)"]["datatrove"].append(n / sum(dt[s]["seconds"] for s in STAGES))
        lid_run = time_ours(pages, ["extract", "language"])["language"]
        lid.append(lid_run["docs"] / lid_run["seconds"])
        print(f"repeat {r}: in-process docs/s {per_stage['all (in-process)']}")
    docs_per_second = {}
    for s, d in per_stage.items():
        speedup = round(statistics.median(d["lmforge"]) / statistics.median(d["datatrove"]), 2)
        docs_per_second[s] = {k: summary(v) for k, v in d.items()} | {"speedup": speedup}
    print(f"\n{'stage':<20}{'lmforge docs/s':>22}{'datatrove docs/s':>22}{'speedup':>9}")
    for s, d in docs_per_second.items():
        cell = lambda x: f"{x['median']:>10} [{x['min']}-{x['max']}]"  # noqa: E731
        print(f"{s:<20}{cell(d['lmforge'])}{cell(d['datatrove'])}{d['speedup']:>8}x")
    print(f"language id (lmforge only): {summary(lid)} docs/s")
    return {
        "docs_per_second": docs_per_second,
        "kept_after_stage": kept,
        "language_id_docs_per_second": summary(lid),
        "compare_machine": machine(),
    }


def scaling(pages: list[dict], repeats: int) -> dict:
    """``lmforge data run`` with 1 and 2 workers, alternating, on the same 8 shards."""
    runs: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for w in (1, 2):
                runs[w].append(len(pages) / whole_pipeline(pages, w, Path(tmp), f"w{w}-{r}"))
    out = {
        "whole_pipeline_docs_per_second": {f"{w}_workers": summary(v) for w, v in runs.items()},
        "scaling_2_vs_1": round(statistics.median(runs[2]) / statistics.median(runs[1]), 2),
        "scaling_machine": machine(),
    }
    for w, v in out["whole_pipeline_docs_per_second"].items():
        print(f"whole pipeline (lmforge data run, FineWeb filters + LID), {w}: {v} docs/s")
    print(f"scaling 1 -> 2 workers: {out['scaling_2_vs_1']}x")
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
    result.update({"pages": len(pages), "repeats": args.repeats})
    if "compare" in args.parts:
        result.update(compare(pages, args.repeats))
    if "scaling" in args.parts:
        result.update(scaling(pages, args.repeats))
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
