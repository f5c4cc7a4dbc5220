"""The extract stage's engines: resiliparse keeps an article and drops the page around it, either engine is
chosen from the config, a wrong name stops the run before work, and a page an engine cannot handle is
counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.config import ConfigError
from lmforge.data.config import PipelineConfig, load_data_config
from lmforge.data.document import Document
from lmforge.data.pipeline import Job
from lmforge.data.run import run_pipeline
from lmforge.data.stages.extract import MAX_DEPTH, Extract, ExtractConfig

ARTICLE = """<!DOCTYPE html>
<html lang="en">
<head><title>Tide pools | Coast Weekly</title><style>body { font: 16px serif; }</style>
<script>var tracker = "script text";</script></head>
<body>
<header class="site-header"><a href="/">Coast Weekly</a>
<nav class="menu"><ul><li><a href="/news">News</a></li><li><a href="/sport">Sport</a></li>
<li><a href="/in">Sign in</a></li></ul></nav>
</header>
<main><article>
<h1>What lives in a tide pool</h1>
<p>Tide pools are small worlds left behind by the falling sea. Twice a day the water drains away and the
animals in them must survive heat, wind and hungry birds until the tide returns.</p>
<p>Anemones close into soft green buttons, crabs hide under stones, and limpets clamp down on the rock so
tightly that a gull cannot pry them loose.</p>
<img src="crab.jpg" alt="A shore crab under a stone">
<p>Visitors should step only on bare rock, put every stone back the way they found it, and leave the animals
where they live.</p>
</article></main>
<aside class="sidebar"><h2>Most read</h2>
<ul><li><a href="/a">Ten best beaches</a></li><li><a href="/b">Storm warning</a></li></ul></aside>
<footer class="site-footer"><p>Copyright 2024 Coast Weekly. All rights reserved.</p>
<a href="/privacy">Privacy policy</a></footer>
</body></html>
"""
ARTICLE_TEXT = (
    "What lives in a tide pool\n"
    "Tide pools are small worlds left behind by the falling sea. Twice a day the water drains away and the "
    "animals in them must survive heat, wind and hungry birds until the tide returns.\n"
    "Anemones close into soft green buttons, crabs hide under stones, and limpets clamp down on the rock so "
    "tightly that a gull cannot pry them loose.\n"
    "Visitors should step only on bare rock, put every stone back the way they found it, and leave the "
    "animals where they live."
)
ENGINES = ["trafilatura", "resiliparse"]


def extract(html: str, **cfg) -> tuple[str | None, str]:
    doc = Document(text=html, id="p", html=True)
    reason = Extract(ExtractConfig(timeout=10.0, **cfg))(doc)
    return reason, doc.text


def test_resiliparse_keeps_the_article_and_drops_the_page_around_it():
    reason, text = extract(ARTICLE, engine="resiliparse")
    assert reason is None
    assert text == ARTICLE_TEXT  # one block per line; no menu, sidebar, footer, script, style or alt text
    for boilerplate in ("Sign in", "Most read", "Storm warning", "Copyright", "script text", "shore crab"):
        assert boilerplate not in text


@pytest.mark.parametrize("engine", ENGINES)
def test_both_engines_write_one_block_per_line(engine):
    """The later filters (newlines per word, short and bulleted lines) read the same layout from either."""
    assert extract(ARTICLE, engine=engine) == (None, ARTICLE_TEXT)


def pages_jsonl(path: Path, pages: dict[str, str]) -> str:
    path.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in pages.items()))
    return str(path)


def engine(cfg: PipelineConfig) -> str:
    """The engine of the extract stage the run would build."""
    return next(s for s in Job.create(cfg).stages if isinstance(s, Extract)).cfg.engine


def test_engine_is_chosen_in_yaml_or_key_value(tmp_path):
    src = pages_jsonl(tmp_path / "pages.jsonl", {"a": ARTICLE})
    io = [f"input={src}", "reader.html=true", "progress=false", "output_format=jsonl"]
    (tmp_path / "fast.yaml").write_text("stages:\n  - extract:\n      engine: resiliparse\n")
    from_yaml = load_data_config(str(tmp_path / "fast.yaml"), [*io, f"output={tmp_path / 'y'}"])
    from_override = load_data_config(
        "data/fineweb", [*io, f"output={tmp_path / 'o'}", "stage.extract.engine=resiliparse"]
    )
    default = load_data_config("data/fineweb", [*io, f"output={tmp_path / 'd'}"])
    engines = [engine(cfg) for cfg in (from_yaml, from_override, default)]
    assert engines == ["resiliparse", "resiliparse", "trafilatura"]
    run_pipeline(from_yaml)
    (record,) = [json.loads(line) for line in (tmp_path / "y/00000.jsonl").read_text().splitlines()]
    assert record["text"] == ARTICLE_TEXT


def test_unknown_engine_fails_before_work(tmp_path, capsys):
    from lmforge.cli import main

    src = pages_jsonl(tmp_path / "pages.jsonl", {"a": ARTICLE})
    args = [f"input={src}", f"output={tmp_path / 'o'}", "stage.extract.engine=boilerpipe"]
    expected = r"extract\.engine: expected one of \['trafilatura', 'resiliparse'\], got 'boilerpipe'"
    with pytest.raises(ConfigError, match=expected):
        run_pipeline(load_data_config("data/fineweb", args))
    assert main(["data", "run", "--config", "data/fineweb", *args]) == 2
    assert "got 'boilerpipe'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_pages_resiliparse_cannot_handle_are_counted_not_fatal(tmp_path):
    """A lone surrogate (a JSON escape of half a character) does not encode to UTF-8, which resiliparse
    parses; a DOM deeper than lxml's limit would make its main-content pass (uninterruptible C) crawl."""
    deep = "<html><body>" + "<div>" * (MAX_DEPTH + 10) + "<p>Deep down, some words.</p></body></html>"
    pages = {"good": ARTICLE, "surrogate": ARTICLE.replace("Twice", "Tw\ud800ice"), "deep": deep}
    src = pages_jsonl(tmp_path / "pages.jsonl", pages)
    args = [f"input={src}", f"output={tmp_path / 'o'}", "reader.html=true", "progress=false"]
    cfg = load_data_config(None, [*args, "stages=[{extract: {engine: resiliparse}}]", "output_format=jsonl"])
    report = run_pipeline(cfg)
    (extract_row,) = [s for s in report["stages"] if s["name"] == "extract"]
    assert (extract_row["docs_in"], extract_row["docs_out"]) == (3, 1)
    assert extract_row["removed"] == {"extract_error": 1, "too_deep": 1}
    (record,) = [json.loads(line) for line in (tmp_path / "o/00000.jsonl").read_text().splitlines()]
    assert record["id"] == "good"


@pytest.mark.parametrize("engine", ENGINES)
def test_both_engines_count_an_empty_page_the_same_way(engine):
    page = "<html><head><title>Loading</title></head><body><script>render();</script> </body></html>"
    assert extract(page, engine=engine) == ("empty", "")
