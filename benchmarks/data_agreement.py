"""Per-page agreement of lmforge's document filters with datatrove's, on the same extracted texts, and the
speed of both.

    python benchmarks/data_agreement.py [--repeats 3] [--out benchmarks/data_agreement.json]

Pages: the 181 article-extraction-benchmark pages and the 225 trafilatura-eval pages of ``<shared>/data/web``.
Each page's text is extracted once, with lmforge's ``extract`` stage (trafilatura, FineWeb's settings;
trafilatura's cross-page dedup cache emptied before every page), and that same text goes to both sides; a
page without text is dropped by both pipelines at extraction and counted apart. Filters, with their default
settings on both sides: Gopher repetition, Gopher quality, C4 (default, and FineWeb's settings:
``filter_no_terminal_punct=false``, which also compares the text C4 keeps), FineWeb. Printed: agreement per
filter and page set, every disagreeing page with both sides' reasons, how many pages get exactly datatrove's
word tokens, and documents/s per filter over all pages in the FineWeb pipeline's order: lmforge "cold" (its
tokenizer caches emptied first, as for a fresh corpus: the first filter tokenizes every new chunk) and "warm"
(the same pass again), datatrove after its spaCy tokenizer is loaded. Needs the bench extra (datatrove,
spaCy); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from _report import machine, summary, write_json  # this folder is on sys.path when a benchmark runs

SHARED = Path(os.environ.get("LMFORGE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
WEB = SHARED / "data/web"
FILTERS = ["gopher_repetition", "gopher_quality", "c4", "c4_fineweb", "fineweb"]
TIMED = ["gopher_repetition", "gopher_quality", "c4_fineweb", "fineweb"]  # the FineWeb pipeline's order


def page_files() -> dict[str, list[tuple[str, Path]]]:
    """(page name, HTML file) of each page set."""
    aeb = WEB / "article-extraction-benchmark"
    traf = WEB / "trafilatura-eval"
    return {
        "article-extraction-benchmark": [
            (key, aeb / "html" / f"{key}.html.gz")
            for key in sorted(json.loads((aeb / "ground-truth.json").read_text()))
        ],
        "trafilatura-eval": [
            (url, traf / e["file"])
            for url, e in sorted(json.loads((traf / "evaldata.json").read_text()).items())
        ],
    }


def extract_texts() -> dict[str, dict[str, str | None]]:
    """Each page's text as lmforge's extract stage gives it (None: no text, or not decodable)."""
    from lmforge.data.document import Document
    from lmforge.data.readers import decode
    from lmforge.data.stages.extract import Extract, ExtractConfig, reset_extractor_state

    extract = Extract(ExtractConfig(timeout=10.0))
    out: dict[str, dict[str, str | None]] = {}
    for name, pages in page_files().items():
        out[name] = {}
        for key, path in pages:
            html = decode(gzip.decompress(path.read_bytes()))
            doc = Document(text=html, id=key, html=True) if isinstance(html, str) else None
            reset_extractor_state()
            out[name][key] = doc.text if doc is not None and extract(doc) is None else None
    return out


def ours() -> dict[str, Callable]:
    from lmforge.data.stages.c4 import C4Config, C4Quality
    from lmforge.data.stages.fineweb import FineWebConfig, FineWebQuality
    from lmforge.data.stages.gopher import (
        GopherQuality,
        GopherQualityConfig,
        GopherRepetition,
        GopherRepetitionConfig,
    )

    return {
        "gopher_repetition": GopherRepetition(GopherRepetitionConfig()),
        "gopher_quality": GopherQuality(GopherQualityConfig()),
        "c4": C4Quality(C4Config()),
        "c4_fineweb": C4Quality(C4Config(filter_no_terminal_punct=False)),
        "fineweb": FineWebQuality(FineWebConfig()),
    }


def theirs() -> dict[str, Callable]:
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    return {
        "gopher_repetition": GopherRepetitionFilter(),
        "gopher_quality": GopherQualityFilter(),
        "c4": C4QualityFilter(),
        "c4_fineweb": C4QualityFilter(filter_no_terminal_punct=False),
        "fineweb": FineWebQualityFilter(),
    }


def run_ours(stage: Callable, text: str) -> tuple[str | None, str]:
    """(drop reason or None, the text afterwards)."""
    from lmforge.data.document import Document

    doc = Document(text=text, id="x")
    return stage(doc), doc.text


def run_theirs(f, text: str) -> tuple[str | None, str]:
    from datatrove.data import Document

    doc = Document(text=text, id="x")
    verdict = f.filter(doc)
    if verdict is True:
        return None, doc.text
    return (verdict[1] if isinstance(verdict, tuple) else "dropped"), doc.text


def agreement(texts: dict[str, dict[str, str | None]]) -> dict:
    """Per page set and filter: pages, agreeing pages, and each disagreement with both sides' reasons."""
    mine, dt = ours(), theirs()
    out: dict = {}
    for name, pages in texts.items():
        with_text = {k: t for k, t in pages.items() if t}
        out[name] = {"pages": len(pages), "without_text": len(pages) - len(with_text), "filters": {}}
        for f in FILTERS:
            disagree, text_differs = [], 0
            for key, text in with_text.items():
                (a, a_text), (b, b_text) = run_ours(mine[f], text), run_theirs(dt[f], text)
                if (a is None) != (b is None):
                    disagree.append({"page": key, "lmforge": a or "kept", "datatrove": b or "kept"})
                elif a is None and a_text != b_text:
                    text_differs += 1
            n = len(with_text)
            out[name]["filters"][f] = {
                "pages": n,
                "agree": n - len(disagree),
                "percent": round(100 * (n - len(disagree)) / n, 2),
                "kept_text_differs": text_differs,
                "disagreements": disagree,
            }
    return out


def token_agreement(texts: dict[str, dict[str, str | None]]) -> dict:
    """Pages whose lmforge tokens equal datatrove's word tokens, and the chunks that tokenize differently."""
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    from lmforge.data.text import tokens

    spacy_words = load_word_tokenizer("en").word_tokenize
    out: dict = {}
    for name, pages in texts.items():
        same, differing = 0, {}
        with_text = [t for t in pages.values() if t]
        for text in with_text:
            if list(tokens(text)) == spacy_words(text):
                same += 1
                continue
            for chunk in text.split():
                if list(tokens(chunk)) != spacy_words(chunk):
                    differing[chunk] = {"lmforge": list(tokens(chunk)), "datatrove": spacy_words(chunk)}
        out[name] = {"pages": len(with_text), "identical": same, "differing_chunks": differing}
    return out


def time_filters(stages: dict[str, Callable], run: Callable, texts: list[str]) -> dict[str, float]:
    """Documents/s of each filter over all texts, in the FineWeb pipeline's order."""
    out = {}
    for f in TIMED:
        t0 = time.perf_counter()
        for text in texts:
            run(stages[f], text)
        out[f] = len(texts) / (time.perf_counter() - t0)
    return out


def speed(texts: dict[str, dict[str, str | None]], repeats: int) -> dict:
    from lmforge.data.text import clear_caches

    flat = [t for pages in texts.values() for t in pages.values() if t]
    mine, dt = ours(), theirs()
    for f in TIMED:  # load spaCy and the like before timing
        run_theirs(dt[f], flat[0])
    runs: dict[str, dict[str, list[float]]] = {f: {"cold": [], "warm": [], "datatrove": []} for f in TIMED}
    loads: list[float] = []  # 1-minute load average after each repeat
    for r in range(repeats):
        clear_caches()
        for kind, (stages, run) in {
            "cold": (mine, run_ours),
            "warm": (mine, run_ours),
            "datatrove": (dt, run_theirs),
        }.items():
            for f, v in time_filters(stages, run, flat).items():
                runs[f][kind].append(v)
        loads.append(round(os.getloadavg()[0], 2))
        print(f"repeat {r}: load {loads[-1]}")
    out = {}
    for f, d in runs.items():
        med = {k: statistics.median(v) for k, v in d.items()}
        out[f] = {
            "lmforge_cold": summary(d["cold"]),
            "lmforge_warm": summary(d["warm"]),
            "datatrove": summary(d["datatrove"]),
            "speedup_cold": round(med["cold"] / med["datatrove"], 1),
            "speedup_warm": round(med["warm"] / med["datatrove"], 1),
        }
    return {"documents": len(flat), "docs_per_second": out, "load_after_each_repeat": loads}


def cpu_name() -> str:
    """The CPU's model name (Linux), which ``machine()`` does not give."""
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def show(result: dict) -> None:
    print(f"\n{'page set':<30}{'filter':<20}{'agreement':>12}")
    for name, s in result["agreement"].items():
        for f, a in s["filters"].items():
            print(f"{name:<30}{f:<20}{a['percent']:>7.2f} % ({a['agree']}/{a['pages']})")
            for d in a["disagreements"]:
                print(f"    {d['page'][:70]}: lmforge {d['lmforge']}, datatrove {d['datatrove']}")
            if a["kept_text_differs"]:
                print(f"    kept by both, different text: {a['kept_text_differs']} pages")
        print(f"    ({s['without_text']} of {s['pages']} pages have no text after extraction: not compared)")
    for name, t in result["tokens"].items():
        print(f"{name}: tokens identical to datatrove's on {t['identical']}/{t['pages']} pages")
        for chunk, d in list(t["differing_chunks"].items())[:10]:
            print(f"    {chunk!r}: lmforge {d['lmforge']}, datatrove {d['datatrove']}")
    m = result["machine"]
    print(f"\n{m['cpu']}, {m['cpus']} CPUs, load {m['load_average'][0]:.2f}")
    print(f"{'filter':<20}{'lmforge cold':>22}{'lmforge warm':>22}{'datatrove':>22}{'speedup':>9}")
    cell = lambda x: f"{x['median']:>10} [{x['min']}-{x['max']}]"  # noqa: E731
    for f, d in result["speed"]["docs_per_second"].items():
        print(
            f"{f:<20}{cell(d['lmforge_cold'])}{cell(d['lmforge_warm'])}{cell(d['datatrove'])}{d['speedup_cold']:>8}x"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).with_name("data_agreement.json")))
    args = ap.parse_args()
    texts = extract_texts()
    result = {
        "agreement": agreement(texts),
        "tokens": token_agreement(texts),
        "speed": speed(texts, args.repeats) | {"repeats": args.repeats},
        "machine": machine() | {"cpu": cpu_name()},
    }
    show(result)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
