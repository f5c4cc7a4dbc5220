"""The funnel report: ``stats.json`` (per stage and reason), ``funnel.png`` (RefinedWeb Fig. 2 style) and
``summary.md``, all built from the tasks' done-markers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmforge.data.document import StageStats
from lmforge.errors import LmforgeError


def merge_stats(names: list[str], results: list[dict[str, Any]]) -> list[StageStats]:
    """Sum the per-shard stats of every position (0 = read, i + 1 = stage i)."""
    merged = [StageStats(n) for n in names]
    for result in results:
        for pos, d in result.get("stats", {}).items():
            merged[int(pos)].add(StageStats.from_dict(d))
    return merged


def funnel(stats: list[StageStats]) -> list[dict[str, Any]]:
    """Share of documents kept after each stage (of all records read) and of characters (of the text
    extracted, since HTML characters do not compare with text characters)."""
    docs_total = stats[0].docs_in or 1
    base = next((s for s in stats if s.name == "extract"), stats[0])
    chars0 = base.chars_out or 1
    past_base = False
    rows = []
    for s in stats:
        row = {
            "stage": s.name,
            "docs_in": s.docs_in,
            "docs_out": s.docs_out,
            "removed_pct": round(100 * (1 - s.docs_out / s.docs_in), 2) if s.docs_in else 0.0,
            "docs_kept_pct": round(100 * s.docs_out / docs_total, 2),
            "chars_kept_pct": round(100 * s.chars_out / chars0, 2) if past_base or s is base else None,
            "seconds": round(s.seconds, 3),
            "reasons": dict(s.removed.most_common()),
        }
        past_base = past_base or s is base
        rows.append(row)
    return rows


def write_report(
    out: Path, stats: list[StageStats], dedup_info: dict[str, Any], n_shards: int
) -> dict[str, Any]:
    report = {
        "shards": n_shards,
        "documents_read": stats[0].docs_in,
        "documents_kept": stats[-1].docs_out,
        "characters_kept": stats[-1].chars_out,
        "stages": [s.to_dict() for s in stats],
        "funnel": funnel(stats),
        "dedup": dedup_info,
    }
    (out / "stats.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    (out / "summary.md").write_text(summary_markdown(report), encoding="utf-8")
    plot_funnel(report["funnel"], out / "funnel.png")
    return report


def load_report(out: str | Path) -> dict[str, Any]:
    path = Path(out) / "stats.json"
    if not path.is_file():
        raise LmforgeError(f"{path} not found: is {out} the output folder of a finished `lmforge data run`?")
    return json.loads(path.read_text(encoding="utf-8"))


def summary_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# lmforge data: funnel",
        "",
        f"{report['documents_read']:,} records read from {report['shards']} shards; "
        f"{report['documents_kept']:,} documents kept ({report['characters_kept']:,} characters).",
        "",
        "| stage | in | out | removed % | docs kept % | chars kept % | seconds | top reasons |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["funnel"]:
        reasons = ", ".join(f"{k} {v:,}" for k, v in list(r["reasons"].items())[:4])
        chars = "" if r["chars_kept_pct"] is None else f"{r['chars_kept_pct']:.1f}"
        lines.append(
            f"| {r['stage']} | {r['docs_in']:,} | {r['docs_out']:,} | {r['removed_pct']:.1f} | "
            f"{r['docs_kept_pct']:.1f} | {chars} | {r['seconds']:.1f} | {reasons} |"
        )
    for name, info in report.get("dedup", {}).items():
        lines.append(f"\n{name}: " + ", ".join(f"{k} {v:,}" for k, v in info.items()))
    return "\n".join(lines) + "\n"


def plot_funnel(rows: list[dict[str, Any]], path: Path) -> None:
    """Horizontal bars per stage: documents kept and, from extraction on, characters kept (in %)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["stage"] for r in rows]
    docs = [r["docs_kept_pct"] for r in rows]
    chars = [r["chars_kept_pct"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    y = list(range(len(rows)))[::-1]
    ax.barh([v + 0.2 for v in y], docs, height=0.4, color="#4C72B0", label="documents kept %")
    ax.barh(
        [v - 0.2 for v in y], [c or 0 for c in chars], height=0.4, color="#DD8452", label="characters kept %"
    )
    for yy, d, c in zip(y, docs, chars):
        ax.text(d + 1, yy + 0.2, f"{d:.1f}", va="center", fontsize=8)
        if c is not None:
            ax.text(c + 1, yy - 0.2, f"{c:.1f}", va="center", fontsize=8)
    ax.set_yticks(y, names)
    ax.set_xlim(0, 110)
    ax.set_xlabel("% kept (documents: of records read; characters: of extracted text)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("lmforge data: what each stage keeps")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
