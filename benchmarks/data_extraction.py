"""Benchmark the extract stage's engines, trafilatura and resiliparse, on the two shared extraction
benchmarks, each scored with its own metric, and their speed; plus the steps around extraction a fast engine
might replace (charset detection, language ID on long texts).

    python benchmarks/data_extraction.py [--repeats 3] [--out benchmarks/data_extraction.json]

- article-extraction-benchmark (181 news/blog pages, gold article bodies): precision, recall and F1 of word
  4-gram shingles as its ``evaluate.py`` defines them. The metric is checked first on the bundled outputs of
  trafilatura, justext and html-text, which must give the README's F1 0.958 / 0.804 / 0.665.
- trafilatura-eval (225 pages, 668 "with" and 678 "without" snippets): whitespace-normalised snippets found
  in the output, summed over pages, as its ``tests/eval_common.py``: precision, recall, accuracy, F1.

Engines run through the lmforge extract stage with its defaults (timeout 10 s, so a busy machine never
times a page out); pages are decoded as the reader decodes them; a dropped page scores as empty output. One
more row, resiliparse with ``main_content=True`` only, is the setting of trafilatura's own evaluation.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from _report import machine, summary, write_json  # this folder is on sys.path when a benchmark runs
from data_pipeline import SHARED, cpu_model

AEB = SHARED / "data/web/article-extraction-benchmark"
TEV = SHARED / "data/web/trafilatura-eval"
README_F1 = {"trafilatura": 0.958, "justext": 0.804, "html-text": 0.665}  # the benchmark's README
Scores = dict[str, float]

# ---- article-extraction-benchmark: evaluate.py's shingle metric ----

_TOKEN_RE = re.compile(r"\w+")


def shingles(text: str, n: int = 4) -> Counter:
    """Word n-grams of ``\\w+`` tokens (one shorter shingle for a text under n tokens)."""
    tokens = _TOKEN_RE.findall(text or "")
    return Counter(tuple(tokens[i : i + n]) for i in range(max(1, len(tokens) - n + 1)) if tokens[i : i + n])


def shingle_counts(true: str, pred: str) -> tuple[float, float, float]:
    """tp, fp, fn over the shingle multisets, normalised to sum 1 so long pages weigh like short ones."""
    gold, got = shingles(true), shingles(pred)
    tp, fp, fn = sum((gold & got).values()), sum((got - gold).values()), sum((gold - got).values())
    total = tp + fp + fn
    return (tp / total, fp / total, fn / total) if total else (0.0, 0.0, 0.0)


def shingle_scores(counts: list[tuple[float, float, float]]) -> Scores:
    """Mean per-page precision and recall (pages without prediction or gold left out), F1 of the means."""
    precision = statistics.mean(1.0 if fp == fn == 0 else tp / (tp + fp) for tp, fp, fn in counts if tp + fp)
    recall = statistics.mean(1.0 if fp == fn == 0 else tp / (tp + fn) for tp, fp, fn in counts if tp + fn)
    f1 = 2 * precision * recall / (precision + recall)
    return {"precision": round(precision, 3), "recall": round(recall, 3), "f1": round(f1, 3)}


def score_aeb(outputs: dict[str, str]) -> Scores:
    gold = json.loads((AEB / "ground-truth.json").read_text())
    return shingle_scores([shingle_counts(gold[k]["articleBody"], outputs[k]) for k in gold])


def check_metric() -> dict[str, Scores]:
    """The bundled reference outputs must score as the README says, or no figure here can be trusted."""
    scores = {}
    for name, f1 in README_F1.items():
        out = json.loads((AEB / f"reference-output/{name}.json").read_text())["output"]
        scores[name] = score_aeb({k: v.get("articleBody", "") for k, v in out.items()})
        if scores[name]["f1"] != f1:
            raise SystemExit(f"metric check failed: {name} F1 {scores[name]['f1']}, README {f1}")
    return scores


# ---- trafilatura-eval: eval_common.py's snippet metric ----


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def score_tev(outputs: dict[str, str]) -> Scores:
    """Snippets that must (``with``) and must not (``without``) appear, summed over pages."""
    tp = fp = fn = tn = 0
    for url, item in json.loads((TEV / "evaldata.json").read_text()).items():
        text = _norm(outputs[url])
        found = sum(_norm(s) in text for s in item["with"])
        leaked = sum(_norm(s) in text for s in item["without"])
        tp, fn = tp + found, fn + len(item["with"]) - found
        fp, tn = fp + leaked, tn + len(item["without"]) - leaked
    p, r = tp / (tp + fp), tp / (tp + fn)
    acc, f1 = (tp + tn) / (tp + fp + fn + tn), 2 * tp / (2 * tp + fp + fn)
    return {"precision": round(p, 3), "recall": round(r, 3), "accuracy": round(acc, 3), "f1": round(f1, 3)}


# ---- pages and engines ----


def load_sets() -> dict[str, dict[str, str]]:
    """{page set: {key: html}}, decoded the way the lmforge reader decodes them."""
    from lmforge.data.readers import decode

    def read(path: Path) -> str:
        text = decode(gzip.decompress(path.read_bytes()))
        assert isinstance(text, str), path
        return text

    gold = json.loads((AEB / "ground-truth.json").read_text())
    evaldata = json.loads((TEV / "evaldata.json").read_text())
    return {
        "article-extraction-benchmark": {k: read(AEB / f"html/{k}.html.gz") for k in gold},
        "trafilatura-eval": {u: read(TEV / e["file"]) for u, e in evaldata.items()},
    }


def stage_engine(engine: str) -> Callable[[str], str]:
    """The lmforge extract stage as html -> text; a dropped page gives empty text."""
    from lmforge.data.document import Document
    from lmforge.data.stages.extract import Extract, ExtractConfig

    stage = Extract(ExtractConfig(engine=engine, timeout=10.0))  # type: ignore[arg-type]

    def run(html: str) -> str:
        doc = Document(text=html, id="", html=True)
        return doc.text if stage(doc) is None else ""

    return run


def library_resiliparse(html: str) -> str:
    from resiliparse.extract.html2text import extract_plain_text

    return extract_plain_text(html, main_content=True)


ENGINES = {
    "trafilatura": lambda: stage_engine("trafilatura"),
    "resiliparse": lambda: stage_engine("resiliparse"),
    "resiliparse main_content only": lambda: library_resiliparse,
}
SCORERS = {"article-extraction-benchmark": score_aeb, "trafilatura-eval": score_tev}


def extract_all(fn: Callable[[str], str], pages: dict[str, str]) -> tuple[dict[str, str], float]:
    """Outputs and seconds; trafilatura's cross-page dedup cache starts empty, as for every shard."""
    from lmforge.data.stages.extract import reset_extractor_state

    reset_extractor_state()
    t0 = time.perf_counter()
    out = {k: fn(html) for k, html in pages.items()}
    return out, time.perf_counter() - t0


def quality_and_speed(sets: dict[str, dict[str, str]], repeats: int) -> list[dict]:
    """One row per engine and page set: the set's own scores, pages with empty output, docs/s over repeats
    (engines interleaved, so load changes hit all of them alike)."""
    fns = {name: make() for name, make in ENGINES.items()}
    speeds: dict[tuple[str, str], list[float]] = {(e, s): [] for e in fns for s in sets}
    scores: dict[tuple[str, str], dict] = {}
    for r in range(repeats):
        for (engine, name), runs in speeds.items():
            out, seconds = extract_all(fns[engine], sets[name])
            runs.append(len(out) / seconds)
            if r == 0:
                empty = sum(not t.strip() for t in out.values())
                scores[engine, name] = SCORERS[name](out) | {"empty_pages": empty}
        print(f"repeat {r}: " + ", ".join(f"{e}/{s[:8]} {v[-1]:.0f}" for (e, s), v in speeds.items()))
    return [
        {"engine": e, "pages": name, "n": len(sets[name]), **scores[e, name], "docs_per_s": summary(v)}
        for (e, name), v in speeds.items()
    ]


# ---- steps around extraction ----


def charset_detection() -> dict:
    """The reader's fallback for bytes that are not UTF-8 and declare nothing usable (charset_normalizer)
    against resiliparse's detector, on the de/fr/es/pl trafilatura-eval pages re-encoded to their legacy
    code page (cp1252, iso-8859-2): ms per page, and how many decode back to exactly the original text."""
    from charset_normalizer import from_bytes
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    legacy = {"de": "cp1252", "fr": "cp1252", "es": "cp1252", "pl": "iso-8859-2"}
    samples = []
    for item in json.loads((TEV / "evaldata.json").read_text()).values():
        raw = gzip.decompress((TEV / item["file"]).read_bytes())
        codec = legacy.get(item["html_lang"][:2])
        try:
            text = raw.decode("utf-8")
            data = text.encode(codec) if codec else raw
        except (UnicodeDecodeError, UnicodeEncodeError):
            continue
        if data != raw:  # a non-ASCII page: the detector has something to get wrong
            samples.append((text, data))
    detectors = {
        "charset_normalizer": lambda b: str(from_bytes(b).best()),
        "resiliparse": lambda b: bytes_to_str(b, detect_encoding(b)),
    }
    out: dict = {"pages": len(samples)}
    for name, fn in detectors.items():
        t0 = time.perf_counter()
        decoded = [fn(data) for _, data in samples]
        ms = (time.perf_counter() - t0) / len(samples) * 1e3
        exact = sum(d == text for d, (text, _) in zip(decoded, samples))
        out[name] = {"ms_per_page": round(ms, 2), "exact": exact}
    return out


def language_id_cap(
    sets: dict[str, dict[str, str]], repeats: int, caps: tuple[int, ...] = (5000, 20000)
) -> dict:
    """Language ID on the whole extracted text (RefinedWeb, FineWeb) against its first ``cap`` characters:
    docs/s over repeats (interleaved), and the decisions (language, or the 0.65 threshold) that change."""
    from lmforge.data.stages.language import Language, LanguageConfig

    lid = Language(LanguageConfig())
    extract = stage_engine("resiliparse")
    texts = [t for pages in sets.values() for t in map(extract, pages.values()) if t]
    full = [lid.predict(t) for t in texts]  # also the warm-up
    speeds: dict[int, list[float]] = {cap: [] for cap in (0, *caps)}
    changed = {}
    for _ in range(repeats):
        for cap, runs in speeds.items():
            t0 = time.perf_counter()
            got = [lid.predict(t[:cap] if cap else t) for t in texts]
            runs.append(len(texts) / (time.perf_counter() - t0))
            changed[cap] = sum(a[0] != b[0] or (a[1] >= 0.65) != (b[1] >= 0.65) for a, b in zip(full, got))
    out: dict = {"texts": len(texts), "max_chars": max(map(len, texts))}
    for cap, runs in speeds.items():
        key = f"first_{cap}_chars" if cap else "whole_text"
        out[key] = {"docs_per_s": summary(runs), "decisions_changed": changed[cap]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).with_name("data_extraction.json")))
    args = ap.parse_args()
    reference = check_metric()
    print("metric check (bundled outputs, F1):", {k: v["f1"] for k, v in reference.items()})
    sets = load_sets()
    start = machine()
    rows = quality_and_speed(sets, args.repeats)
    print(f"\n{'engine':<32}{'pages':<30}{'P':>6}{'R':>6}{'F1':>7}{'docs/s':>26}")
    for row in rows:
        s = row["docs_per_s"]
        scores = "".join(f"{row[k]:>{w}}" for k, w in (("precision", 6), ("recall", 6), ("f1", 7)))
        print(f"{row['engine']:<32}{row['pages']:<30}{scores}{s['median']:>10} [{s['min']}-{s['max']}]")
    side = {"charset_detection": charset_detection(), "language_id_cap": language_id_cap(sets, args.repeats)}
    print(json.dumps(side, indent=1))
    write_json(
        args.out,
        {
            "versions": {p: version(p) for p in ("trafilatura", "resiliparse")},
            "cpu": cpu_model(),
            "metric_check_bundled_outputs": reference,
            "extraction": rows,
            "repeats": args.repeats,
            **side,
            "machine_at_start": start,
            "machine_at_end": machine(),
        },
    )


if __name__ == "__main__":
    main()
