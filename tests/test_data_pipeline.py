"""End to end over the real pages: per-stage counts, identical output from every executor, resuming after a
crash, the report files and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.data.config import PipelineConfig, load_data_config
from lmforge.data.run import run_pipeline


def outputs(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.jsonl"))}


def comparable(report: dict) -> list[dict]:
    """Per-stage counts without timings."""
    return [{k: v for k, v in s.items() if k != "seconds"} for s in report["stages"]]


def refinedweb_cfg(shared: Path, out: Path, *extra: str) -> PipelineConfig:
    web = shared / "web"
    return load_data_config(
        "data/refinedweb",
        [
            f"input=[{web / 'trafilatura-eval/html'}, {web / 'warc'}]",
            f"output={out}",
            "output_format=jsonl",
            "stage.extract.timeout=10",  # generous on a slow CI machine: no page may time out here
            "progress=false",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def e2e(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "rw"
    report = run_pipeline(refinedweb_cfg(shared_data, out, "workers=2", "write_dropped=true"))
    return report, out


def test_refinedweb_funnel_on_real_pages(e2e):
    """225 trafilatura-eval pages (180 with lang="en", 45 de/es/fr/pl; many "en" pages are really German)
    and 53 WARC responses. Counts come from trafilatura 2.x and lid.176.ftz, each checked by hand; both
    Gopher stages decide as datatrove does on all 184 texts they receive (benchmarks/data_agreement.py)."""
    report, _ = e2e
    funnel = {s["name"]: (s["docs_in"], s["docs_out"], s["removed"]) for s in report["stages"]}
    assert report["shards"] == 7  # 4 groups of <= 64 HTML files + 3 WARC files
    assert funnel["read"] == (278, 278, {})
    assert funnel["url_filter"] == (278, 278, {})  # local files carry no URL; the WARC URLs are clean
    assert funnel["extract"] == (278, 275, {"empty": 3})
    assert funnel["language"] == (275, 184, {"other_language": 90, "low_score": 1})
    assert funnel["gopher_repetition"] == (
        184,
        172,
        {"dup_5_gram_frac": 5, "dup_line_frac": 4, "top_2_gram": 2, "top_4_gram": 1},
    )
    assert funnel["gopher_quality"] == (172, 147, {"below_alpha_ratio": 24, "short_doc": 1})
    assert funnel["line_corrections"][:2] == (147, 147)
    # 3 captures of https://allenai.org/ and the two copies of a womencantalksports "top 10" page
    assert funnel["minhash"] == (147, 144, {"near_duplicate": 3})
    assert funnel["exact_substring"][:2] == (144, 144)
    assert funnel["exact_dedup"] == (144, 144, {})  # URL dedup: the repeated URL went in the MinHash stage
    assert report["documents_kept"] == 144
    assert report["dedup"]["minhash"]["clusters"] == 2
    assert report["dedup"]["exact_substring"]["docs_with_cuts"] == 1


def test_language_stage_drops_the_non_english_pages(e2e, shared_data):
    _, out = e2e
    kept = [json.loads(line) for text in outputs(out).values() for line in text.splitlines()]
    assert all(d["metadata"]["language"] == "en" and d["metadata"]["language_score"] >= 0.65 for d in kept)
    evaldata = json.loads((shared_data / "web/trafilatura-eval/evaldata.json").read_text())
    non_en = {
        Path(e["file"]).name.split(".")[0] for e in evaldata.values() if not e["html_lang"].startswith("en")
    }
    assert len(non_en) == 45
    assert len(non_en & {d["id"] for d in kept}) <= 1  # one "fr"-labelled page is English text


def test_report_files(e2e):
    report, out = e2e
    assert (out / "funnel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text()
    assert "| language | 275 | 184 |" in summary
    rows = {r["stage"]: r for r in report["funnel"]}
    assert rows["language"]["docs_kept_pct"] == round(100 * 184 / 278, 2)
    assert rows["extract"]["chars_kept_pct"] == 100.0
    assert not (out / "_work" / "seg0").exists()  # intermediate shards are removed after a full run


def test_dropped_files_match_the_funnel(e2e):
    """Every document a stage removes is in its dropped files under the reason the report counts, as the
    stage received it: HTML for the pages extraction found empty, with the language found for the others."""
    from collections import Counter

    report, out = e2e
    for pos, stage in enumerate(report["stages"][1:], start=1):
        records = []
        for path in sorted(out.glob(f"_dropped/{pos:02d}_{stage['name']}/*.jsonl")):
            records += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        assert Counter(r["reason"] for r in records) == stage["removed"], stage["name"]
        assert all(r["stage"] == stage["name"] for r in records)
        if stage["name"] == "extract":
            assert all(r["html"] and "<" in r["text"] for r in records)
        if stage["name"] == "language":
            assert all(r["metadata"]["language"] and "<" not in r["text"] for r in records)


def test_ray_executor_gives_identical_output(e2e, shared_data, tmp_path):
    ray = pytest.importorskip("ray")
    report, out = e2e
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ray_report = run_pipeline(refinedweb_cfg(shared_data, tmp_path / "ray", "executor=ray"))
    finally:
        ray.shutdown()
    assert outputs(tmp_path / "ray") == outputs(out)
    assert comparable(ray_report) == comparable(report)


def small_input(shared: Path, tmp: Path) -> list[str]:
    """Three WARC files plus 20 HTML pages: enough for every stage, quick to run."""
    pages = sorted((shared / "web/trafilatura-eval/html").glob("*.html.gz"))[:20]
    return [str(shared / "web/warc"), *map(str, pages)]


def fineweb_cfg(inputs: list[str], out: Path, **kw) -> PipelineConfig:
    cfg = load_data_config(
        "data/fineweb", ["stage.extract.timeout=10", "progress=false", "output_format=jsonl"]
    )
    cfg.input, cfg.output = inputs, str(out)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_one_and_two_workers_give_identical_output(shared_data, tmp_path):
    inputs = small_input(shared_data, tmp_path)
    one = run_pipeline(fineweb_cfg(inputs, tmp_path / "w1", workers=1))
    two = run_pipeline(fineweb_cfg(inputs, tmp_path / "w2", workers=2))
    assert outputs(tmp_path / "w1") == outputs(tmp_path / "w2")
    assert comparable(one) == comparable(two)
    assert one["documents_kept"] > 10


def test_resume_after_crash_skips_finished_shards(shared_data, tmp_path, monkeypatch):
    import lmforge.data.pipeline as pipeline

    inputs = small_input(shared_data, tmp_path)
    reference = run_pipeline(fineweb_cfg(inputs, tmp_path / "ref"))
    real, real_write = pipeline._run_segment, pipeline.DocumentWriter.write
    calls: list[tuple[int, int]] = []

    def crash_in_shard_2(writer, doc):
        if writer.path.name.startswith("00002") and writer.count == 1:
            raise KeyboardInterrupt  # Ctrl-C half-way through writing shard 2 of the first segment
        real_write(writer, doc)

    monkeypatch.setattr(
        pipeline, "_run_segment", lambda job, k, shard: calls.append((k, shard)) or real(job, k, shard)
    )
    monkeypatch.setattr(pipeline.DocumentWriter, "write", crash_in_shard_2)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(fineweb_cfg(inputs, tmp_path / "run"))
    monkeypatch.setattr(pipeline.DocumentWriter, "write", real_write)
    assert calls == [(0, 0), (0, 1), (0, 2)]
    seg0 = tmp_path / "run" / "_work" / "seg0"
    assert (seg0 / "00001.jsonl.zst").exists()  # finished shards stay
    assert not list(seg0.glob("00002*"))  # no half-written shard, not even its temporary file
    calls.clear()
    monkeypatch.setattr(
        pipeline, "_run_segment", lambda job, k, shard: calls.append((k, shard)) or real(job, k, shard)
    )
    report = run_pipeline(fineweb_cfg(inputs, tmp_path / "run"))
    assert (0, 0) not in calls and (0, 1) not in calls and (0, 2) in calls  # finished shards were skipped
    assert outputs(tmp_path / "run") == outputs(tmp_path / "ref")
    assert comparable(report) == comparable(reference)


def test_resume_refuses_a_different_config(shared_data, tmp_path):
    from lmforge.errors import LmforgeError

    inputs = [str(shared_data / "web/warc/dolma-sample-0001.warc.gz")]
    run_pipeline(fineweb_cfg(inputs, tmp_path / "o"))
    run_pipeline(fineweb_cfg(inputs, tmp_path / "o", workers=2))  # how it runs may change
    cfg = fineweb_cfg(inputs, tmp_path / "o")
    cfg.stage = {"language": {"threshold": 0.9}}
    with pytest.raises(LmforgeError, match="different config keys stage"):
        run_pipeline(cfg)


def test_cli_run_and_stats(shared_data, tmp_path, capsys):
    from lmforge.cli import main

    warc = shared_data / "web/warc"
    args = ["data", "run", "--config", "data/fineweb", f"input={warc}/dolma-sample-0000.warc.gz"]
    args += [f"{warc}/dolma-sample-0001.warc.gz"]  # a second bare path: an unquoted glob the shell expanded
    args += [f"output={tmp_path / 'o'}", "output_format=parquet", "skip=[minhash]", "progress=false"]
    rc = main(args)
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "o").glob("*.parquet")) == ["00000.parquet", "00001.parquet"]
    capsys.readouterr()
    assert main(["data", "stats", str(tmp_path / "o")]) == 0
    assert "| read | 37 | 37 |" in capsys.readouterr().out
    assert main(["data", "stats", str(tmp_path / "missing")]) == 2
    assert "stats.json not found" in capsys.readouterr().err


def test_html_stays_html_across_a_dedup_boundary(tmp_path):
    """URL dedup before extraction: the shards between the two phases still know they hold markup."""

    def body(n: int) -> str:
        return "<p>" + " ".join(f"page{n} word{i} is here" for i in range(60)) + ".</p>"

    pages = [
        (f"https://a.example/{i % 2}", f"<html><body><h1>Page {i}</h1>{body(i)}</body></html>")
        for i in range(3)
    ]
    src = tmp_path / "crawl.jsonl"
    src.write_text(
        "".join(json.dumps({"url": u, "text": h, "id": str(i)}) + "\n" for i, (u, h) in enumerate(pages))
    )
    cfg = PipelineConfig(
        input=[str(src)],
        output=str(tmp_path / "out"),
        output_format="jsonl",
        stages=[{"exact_dedup": {"field": "url"}}, "extract"],
        progress=False,
    )
    cfg.reader.html = True
    report = run_pipeline(cfg)
    texts = [
        json.loads(rec)["text"] for shard in outputs(tmp_path / "out").values() for rec in shard.splitlines()
    ]
    assert report["documents_kept"] == 2 and len(texts) == 2  # the page repeating URL 0 went
    assert all(t.startswith("page") and "<" not in t for t in texts), texts  # extracted, not markup


# ------------------------------------------------------------------ stages of your own, dropped documents

USER_STAGES = """
from dataclasses import dataclass

from lmforge.data.stages.base import Stage


@dataclass
class MinWordsConfig:
    min_words: int = 3


class MinWords(Stage):
    name = "min_words"
    config_class = MinWordsConfig

    def __call__(self, doc):
        return "too_few_words" if len(doc.text.split()) < self.cfg.min_words else None


class Unnamed(Stage):
    def __call__(self, doc):
        return None


class Language(Stage):
    name = "language"


def no_digits(doc):
    return not any(c.isdigit() for c in doc.text)


def shout(doc):
    doc.text = doc.text.upper()
    return True


def forgot_return(doc):
    doc.metadata["seen"] = True
"""

USER = "lmf_user_stages.filters"
STAGES = [{f"{USER}:MinWords": {"min_words": 3}}, f"{USER}:no_digits", "exact_dedup", f"{USER}:shout"]
DOCS = [
    [
        {"id": "a", "text": "alpha beta gamma delta"},
        {"id": "b", "text": "too short"},
        {"id": "c", "text": "page 42 has digits in it"},
    ],
    [
        {"id": "d", "text": "alpha beta gamma delta"},  # a copy of a, in the other shard
        {"id": "e", "text": "one more fine document here"},
        {"id": "f", "text": "x"},
    ],
]
# (folder, shard file, id, reason): what each stage drops, by its row in the report
EXPECTED_DROPS = {
    ("01_min_words", "00000.jsonl", "b", "too_few_words"),
    ("01_min_words", "00001.jsonl", "f", "too_few_words"),
    ("02_no_digits", "00000.jsonl", "c", "rejected"),
    ("03_exact_dedup", "00001.jsonl", "d", "duplicate"),
}


@pytest.fixture(scope="module")
def user_stages(tmp_path_factory):
    """A package of the user's own stages, importable from a folder that is not the working directory."""
    import sys

    root = tmp_path_factory.mktemp("userpkg")
    (root / "lmf_user_stages").mkdir()
    (root / "lmf_user_stages" / "__init__.py").write_text("")
    (root / "lmf_user_stages" / "filters.py").write_text(USER_STAGES)
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    for name in [m for m in sys.modules if m.startswith("lmf_user_stages")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def user_input(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("userin")
    for i, docs in enumerate(DOCS):
        (folder / f"{i}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    return [str(folder / "0.jsonl"), str(folder / "1.jsonl")]


def user_cfg(inputs: list[str], out: Path, **kw) -> PipelineConfig:
    return PipelineConfig(
        input=inputs, output=str(out), output_format="jsonl", stages=STAGES, progress=False, **kw
    )


def dropped(out: Path) -> set[tuple[str, str, str, str]]:
    """Every dropped record as (stage folder, file, id, reason), checking its text and stage on the way."""
    texts = {d["id"]: d["text"] for docs in DOCS for d in docs}
    found = set()
    for path in sorted((out / "_dropped").rglob("*")):
        if path.is_file():
            for rec in map(json.loads, path.read_text(encoding="utf-8").splitlines()):
                assert rec["text"] == texts[rec["id"]]  # the document as the stage received it
                assert path.parent.name == f"{path.parent.name[:2]}_{rec['stage']}"
                found.add((path.parent.name, path.name, rec["id"], rec["reason"]))
    return found


@pytest.mark.parametrize("workers", [1, 2])
def test_user_stages_run_like_built_ins(user_stages, user_input, tmp_path, workers):
    """A Stage subclass with options and two plain functions, on both sides of a dedup boundary: counted per
    stage and reason in the report, and each drop written with its stage and reason."""
    report = run_pipeline(user_cfg(user_input, tmp_path / "o", workers=workers, write_dropped=True))
    funnel = {s["name"]: (s["docs_in"], s["docs_out"], s["removed"]) for s in report["stages"]}
    assert funnel == {
        "read": (6, 6, {}),
        "min_words": (6, 4, {"too_few_words": 2}),
        "no_digits": (4, 3, {"rejected": 1}),
        "exact_dedup": (3, 2, {"duplicate": 1}),
        "shout": (2, 2, {}),
    }
    kept = [json.loads(line) for text in outputs(tmp_path / "o").values() for line in text.splitlines()]
    assert [(d["id"], d["text"]) for d in kept] == [
        ("a", "ALPHA BETA GAMMA DELTA"),
        ("e", "ONE MORE FINE DOCUMENT HERE"),
    ]
    assert dropped(tmp_path / "o") == EXPECTED_DROPS
    assert not list((tmp_path / "o").rglob(".*"))  # no temporaries left

    from lmforge.data.readers import discover

    assert [p.name for p in discover([str(tmp_path / "o")])] == ["00000.jsonl", "00001.jsonl"]  # not _dropped


def test_user_stages_on_ray(user_stages, user_input, tmp_path):
    """Ray workers do not share the driver's sys.path: they import the user's package where the driver did."""
    pytest.importorskip("ray")
    local = run_pipeline(user_cfg(user_input, tmp_path / "local", write_dropped=True))
    ray_report = run_pipeline(
        user_cfg(user_input, tmp_path / "ray", executor="ray", workers=2, write_dropped=True)
    )
    assert outputs(tmp_path / "ray") == outputs(tmp_path / "local")
    assert comparable(ray_report) == comparable(local)
    assert dropped(tmp_path / "ray") == EXPECTED_DROPS


def test_dropped_files_survive_a_crash_and_resume(user_stages, user_input, tmp_path, monkeypatch):
    import lmforge.atomic as atomic
    import lmforge.data.pipeline as pipeline
    from lmforge.errors import LmforgeError
    from test_atomic import dead_pid

    real_write = pipeline.DocumentWriter.write

    def crash_in_dropped_file_of_shard_1(writer, doc, **fields):
        if writer.path.parent.parent.name == "_dropped" and writer.path.name.startswith("00001"):
            raise KeyboardInterrupt
        real_write(writer, doc, **fields)

    monkeypatch.setattr(pipeline.DocumentWriter, "write", crash_in_dropped_file_of_shard_1)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(user_cfg(user_input, tmp_path / "o", write_dropped=True))
    monkeypatch.setattr(pipeline.DocumentWriter, "write", real_write)
    assert dropped(tmp_path / "o") == {d for d in EXPECTED_DROPS if d[1] == "00000.jsonl"}  # shard 0 done
    assert not list((tmp_path / "o").rglob(".*"))  # shard 1's files were not committed, nor left behind
    with pytest.raises(LmforgeError, match="different config keys write_dropped"):
        run_pipeline(user_cfg(user_input, tmp_path / "o"))  # what it writes may not change on resume
    killed = tmp_path / "o" / "_dropped" / "01_min_words" / f".00001.jsonl.tmp-{dead_pid()}-{atomic._HOST}"
    killed.write_text("{half a rec")  # what a worker killed by SIGKILL leaves
    report = run_pipeline(user_cfg(user_input, tmp_path / "o", write_dropped=True))
    assert not killed.exists()
    assert dropped(tmp_path / "o") == EXPECTED_DROPS
    assert report["documents_kept"] == 2


def test_user_stage_names_options_overrides_and_skip(user_stages, tmp_path):
    from lmforge.data.config import validate

    cfg = load_data_config(
        None,
        [
            f"input={tmp_path}",
            f"output={tmp_path / 'o'}",
            f"stages=[{{'{USER}:MinWords': {{min_words: 2}}}}, {USER}:Unnamed, {USER}:no_digits, minhash]",
            "stage.min_words.min_words=5",
            "skip=[no_digits]",
        ],
    )
    specs = validate(cfg)
    assert [(s.name, s.dedup) for s in specs] == [("min_words", False), ("Unnamed", False), ("minhash", True)]
    assert specs[0].params(specs[0].target()).min_words == 5


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        (
            "nosuch_pkg.filters:F",
            r"stages\[0\]: cannot import 'nosuch_pkg.filters' for stage "
            r"'nosuch_pkg.filters:F': ModuleNotFoundError: No module named 'nosuch_pkg'",
        ),
        (f"{USER}:Nope", rf"stages\[0\]: cannot import 'Nope' from '{USER}'"),
        (f"{USER}:MinWordsConfig", r"stages\[0\]: .*MinWordsConfig is neither a subclass of .*Stage"),
        (f"{USER}:Language", r"stages\[0\]: .* is named 'language' like a built-in stage"),
        (":F", r"stages\[0\]: ':F' is not an import path of the form module:attribute"),
        (
            {f"{USER}:MinWords": {"min_word": 2}},
            rf"unknown config key stages\[0\]\.{USER}:MinWords\.min_word "
            r"for MinWordsConfig; valid keys: min_words",
        ),
        ({f"{USER}:MinWords": {"min_words": "two"}}, "expected an integer"),
        (
            {f"{USER}:no_digits": {"x": 1}},
            rf"unknown config key stages\[0\]\.{USER}:no_digits\.x: .*no options",
        ),
    ],
)
def test_bad_user_stages_fail_before_work(user_stages, user_input, tmp_path, stage, message):
    from lmforge.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        run_pipeline(PipelineConfig(input=user_input, output=str(tmp_path / "o"), stages=[stage]))
    assert not (tmp_path / "o").exists()


def test_cli_names_a_stage_that_cannot_be_imported(user_input, tmp_path, capsys):
    from lmforge.cli import main

    args = ["data", "run", f"input={user_input[0]}", f"output={tmp_path / 'o'}", "stages=[nosuch.mod:F]"]
    assert main(args) == 2
    assert "stages[0]: cannot import 'nosuch.mod' for stage 'nosuch.mod:F'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_function_stage_must_answer_true_or_false(user_stages, user_input, tmp_path):
    from lmforge.errors import LmforgeError

    cfg = PipelineConfig(input=user_input, output=str(tmp_path / "o"), stages=[f"{USER}:forgot_return"])
    cfg.progress = False
    with pytest.raises(LmforgeError, match=r"forgot_return returned None; a function stage returns True"):
        run_pipeline(cfg)


def test_ray_address_without_a_cluster_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    ray = pytest.importorskip("ray")
    from lmforge.cli import main

    def no_cluster(*args, **kwargs):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "a document of a few words"}) + "\n")
    args = ["data", "run", f"input={tmp_path / 'a.jsonl'}", f"output={tmp_path / 'out'}", "executor=ray"]
    assert main([*args, "ray.address=auto"]) == 2
    err = capsys.readouterr().err.strip()
    assert "ray.address=auto: no Ray cluster there" in err and "ray start --head" in err
    assert len(err.splitlines()) == 1
