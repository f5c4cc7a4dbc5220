"""End to end over the real pages: per-stage counts, identical output from every executor, resuming after a
crash, the report files and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.data.config import DataConfig, load_data_config
from lmforge.data.run import run_pipeline


def outputs(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.jsonl"))}


def comparable(report: dict) -> list[dict]:
    """Per-stage counts without timings."""
    return [{k: v for k, v in s.items() if k != "seconds"} for s in report["stages"]]


def refinedweb_cfg(shared: Path, out: Path, *extra: str) -> DataConfig:
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
    report = run_pipeline(refinedweb_cfg(shared_data, out, "workers=2"))
    return report, out


def test_refinedweb_funnel_on_real_pages(e2e):
    """225 trafilatura-eval pages (180 with lang="en", 45 de/es/fr/pl; many "en" pages are really German)
    and 53 WARC responses. Counts come from trafilatura 2.x and lid.176.ftz, each checked by hand."""
    report, _ = e2e
    funnel = {s["name"]: (s["docs_in"], s["docs_out"], s["removed"]) for s in report["stages"]}
    assert report["shards"] == 7  # 4 groups of <= 64 HTML files + 3 WARC files
    assert funnel["read"] == (278, 278, {})
    assert funnel["url_filter"] == (278, 278, {})  # local files carry no URL; the WARC URLs are clean
    assert funnel["extract"] == (278, 275, {"empty": 3})
    assert funnel["language"] == (275, 184, {"other_language": 90, "low_score": 1})
    assert funnel["gopher_repetition"] == (
        184,
        171,
        {"dup_5_gram_frac": 5, "dup_6_gram_frac": 1, "dup_line_frac": 4, "top_2_gram": 2, "top_4_gram": 1},
    )
    assert funnel["gopher_quality"] == (171, 139, {"below_alpha_ratio": 31, "short_doc": 1})
    assert funnel["line_corrections"][:2] == (139, 139)
    assert funnel["minhash"] == (
        139,
        137,
        {"near_duplicate": 2},
    )  # 3 captures of https://allenai.org/
    assert funnel["exact_substring"][:2] == (137, 137)
    assert funnel["exact_dedup"] == (137, 137, {})  # URL dedup: the repeated URL went in the MinHash stage
    assert report["documents_kept"] == 137
    assert report["dedup"]["minhash"]["clusters"] == 1
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


def fineweb_cfg(inputs: list[str], out: Path, **kw) -> DataConfig:
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
    real, real_write = pipeline._run_segment, pipeline.ShardWriter.write
    calls: list[tuple[int, int]] = []

    def crash_in_shard_2(writer, doc):
        if writer.path.name.startswith("00002") and writer.count == 1:
            raise KeyboardInterrupt  # Ctrl-C half-way through writing shard 2 of the first segment
        real_write(writer, doc)

    monkeypatch.setattr(
        pipeline, "_run_segment", lambda job, k, shard: calls.append((k, shard)) or real(job, k, shard)
    )
    monkeypatch.setattr(pipeline.ShardWriter, "write", crash_in_shard_2)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(fineweb_cfg(inputs, tmp_path / "run"))
    monkeypatch.setattr(pipeline.ShardWriter, "write", real_write)
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
    cfg = DataConfig(
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
