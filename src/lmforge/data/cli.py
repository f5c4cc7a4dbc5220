"""``lmforge data run`` / ``lmforge data stats``: the web-data pipeline from the command line."""

from __future__ import annotations

import argparse
import json
import re

from lmforge.config import ConfigError, presets_help

_KEY_RE = re.compile(r"^[A-Za-z_][\w.]*=")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="clean and deduplicate web data (RefinedWeb/FineWeb-style pipeline)")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="<command>")
    run_p = data_sub.add_parser(
        "run",
        help="run a pipeline: lmforge data run --config data/refinedweb input=crawl/*.warc.gz output=clean/",
    )
    run_p.add_argument(
        "--config", default="data/refinedweb", help="YAML file or preset (default: data/refinedweb)"
    )
    run_p.add_argument(
        "overrides",
        nargs="*",
        help="key=value settings (input=..., output=..., workers=N, executor=ray, "
        "stage.language.threshold=0.7, write_dropped=true); "
        "bare paths after input= (an unquoted glob the shell expanded) are added to the input",
    )
    run_p.formatter_class = argparse.RawDescriptionHelpFormatter
    run_p.epilog = (
        "the keys: see a preset (configs/data/*.yaml) and docs/data.md; each stage's options as "
        f"stage.NAME.KEY=value\n\n{presets_help('data')}"
    )
    run_p.set_defaults(func=run)
    stats_p = data_sub.add_parser("stats", help="print the funnel of a finished run")
    stats_p.add_argument("output", help="the output folder of `lmforge data run`")
    stats_p.set_defaults(func=stats)


def split_overrides(items: list[str]) -> list[str]:
    """Fold bare paths that follow ``input=`` into it, so ``input=crawl/*.warc.gz`` works quoted or not."""
    out: list[str] = []
    inputs: list[str] | None = None
    for item in items:
        if _KEY_RE.match(item):
            key, value = item.split("=", 1)
            inputs = [value] if key == "input" else None
            out.append(item)
        elif inputs is not None:
            inputs.append(item)
            out[-1] = "input=" + json.dumps(inputs)
        else:
            raise ConfigError(f"argument {item!r} is not of the form key=value")
    return out


def run(args: argparse.Namespace) -> int:
    from lmforge.data.config import load_data_config
    from lmforge.data.run import run_pipeline

    cfg = load_data_config(args.config, split_overrides(args.overrides))
    report = run_pipeline(cfg)
    files = "stats.json, summary.md, funnel.png" + (", _dropped/" if cfg.write_dropped else "")
    print(
        f"kept {report['documents_kept']:,} of {report['documents_read']:,} records "
        f"({report['characters_kept']:,} characters) -> {cfg.output} ({files})"
    )
    return 0


def stats(args: argparse.Namespace) -> int:
    from lmforge.data.report import load_report, summary_markdown

    print(summary_markdown(load_report(args.output)), end="")
    return 0
