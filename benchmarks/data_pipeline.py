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
import platform
import statistics
import tempfile
import time
from pathlib import Path

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
    from lmforge.data.config import DataConfig
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
    cfg = DataConfig(input=[str(src)], output=str(tmp / tag), stages=stages, workers=workers, progress=False)
    cfg.reader.html = True
    t0 = time.perf_counter()
    run_pipeline(cfg)
    return time.perf_counter() - t0


def machine() -> dict:
    """CPUs and the load average when the figures were taken: other work on the box skews them."""
    return {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "loadavg_1m": os.getloadavg()[0],
    }


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).with_name("data_pipeline.json")))
    args = ap.parse_args()
    pages = load_pages()
    n = len(pages)
    print(f"{n} pages, {sum(len(p['text']) for p in pages) / 1e6:.1f} MB of HTML, {os.cpu_count()} CPUs")
    per_stage: dict[str, dict[str, list[float]]] = {s: {"lmforge": [], "datatrove": []} for s in STAGES}
    lid: list[float] = []
    kept: dict[str, dict[str, int]] = {}
    for r in range(args.repeats):
        mine = time_ours(pages, STAGES)
        dt = time_theirs(pages)
        for s in STAGES:
            per_stage[s]["lmforge"].append(mine[s]["docs"] / mine[s]["seconds"])
            per_stage[s]["datatrove"].append(dt[s]["docs"] / dt[s]["seconds"])
            kept[s] = {"lmforge": mine[s]["kept"], "datatrove": dt[s]["kept"]}
        lid_run = time_ours(pages, ["extract", "language"])["language"]
        lid.append(lid_run["docs"] / lid_run["seconds"])
        total_mine = sum(mine[s]["seconds"] for s in STAGES)
        total_dt = sum(dt[s]["seconds"] for s in STAGES)
        print(f"repeat {r}: in-process docs/s: lmforge {n / total_mine:.1f}, datatrove {n / total_dt:.1f}")
        per_stage.setdefault("all (in-process)", {"lmforge": [], "datatrove": []})
        per_stage["all (in-process)"]["lmforge"].append(n / total_mine)
        per_stage["all (in-process)"]["datatrove"].append(n / total_dt)
    scaling = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for w in (1, 2):
                scaling[w].append(n / whole_pipeline(pages, w, Path(tmp), f"w{w}-{r}"))
    result = {
        "machine": machine(),
        "pages": n,
        "repeats": args.repeats,
        "docs_per_second": {
            s: {k: summary(v) for k, v in d.items()}
            | {"speedup": round(statistics.median(d["lmforge"]) / statistics.median(d["datatrove"]), 2)}
            for s, d in per_stage.items()
        },
        "kept_after_stage": kept,
        "language_id_docs_per_second": summary(lid),
        "whole_pipeline_docs_per_second": {f"{w}_workers": summary(v) for w, v in scaling.items()},
        "scaling_2_vs_1": round(statistics.median(scaling[2]) / statistics.median(scaling[1]), 2),
    }
    print(f"\n{'stage':<20}{'lmforge docs/s':>22}{'datatrove docs/s':>22}{'speedup':>9}")
    for s, d in result["docs_per_second"].items():
        a, b = d["lmforge"], d["datatrove"]
        cell = lambda x: f"{x['median']:>10} [{x['min']}-{x['max']}]"  # noqa: E731
        print(f"{s:<20}{cell(a)}{cell(b)}{d['speedup']:>8}x")
    print(f"language id (lmforge only): {result['language_id_docs_per_second']}")
    for w, v in result["whole_pipeline_docs_per_second"].items():
        print(f"whole pipeline (lmforge data run, FineWeb filters + LID), {w}: {v} docs/s")
    print(f"scaling 1 -> 2 workers: {result['scaling_2_vs_1']}x")
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
