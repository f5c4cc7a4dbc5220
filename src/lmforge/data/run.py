"""``run_pipeline``: check, plan, execute, report."""

from __future__ import annotations

from typing import Any

from lmforge.data.config import DataConfig
from lmforge.data.executors import execute
from lmforge.data.pipeline import Job
from lmforge.data.report import merge_stats, write_report


def run_pipeline(cfg: DataConfig) -> dict[str, Any]:
    """Run the pipeline of ``cfg`` (resuming a run in the same output folder) and return its report."""
    job = Job.create(cfg)  # every check that can fail happens here, before any work
    job.claim_output()
    results = execute(job)
    segments = [r for t, r in sorted(results.items(), key=lambda x: x[0].marker) if t.kind == "segment"]
    stats = merge_stats(job.stage_names(), segments)
    for task, r in results.items():  # dedup time: signatures while writing, combine and finish tasks
        pos = job.boundaries[task.k] + 1 if task.kind != "segment" else None
        if task.kind == "segment" and task.k < len(job.boundaries):
            stats[job.boundaries[task.k] + 1].seconds += r.get("prepare_seconds", 0.0)
        elif pos is not None:
            stats[pos].seconds += r["seconds"]
    dedup_info = {
        job.specs[job.boundaries[t.k]].name: r["info"] for t, r in results.items() if t.kind == "finish"
    }
    report = write_report(job.out, stats, dedup_info, len(job.shards))
    job.cleanup()
    return report
