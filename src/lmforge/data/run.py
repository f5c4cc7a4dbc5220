"""``run_pipeline``: check, plan, execute, report."""

from __future__ import annotations

from typing import Any

from lmforge.data.config import PipelineConfig
from lmforge.data.executors import execute
from lmforge.data.pipeline import Job
from lmforge.data.report import merge_stats, write_report


def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    """Run the pipeline of ``cfg`` (resuming a run in the same output folder) and return its report."""
    job = Job.create(cfg)  # every check that can fail happens here, before any work
    job.claim_output()
    results = execute(job)
    segments = [r for t, r in sorted(results.items(), key=lambda x: x[0].marker) if t.kind == "segment"]
    stats = merge_stats(job.stage_names(), segments)
    for task, r in results.items():  # a dedup stage's time: its preparer (during segment k), combine, finish
        if task.k < len(job.boundaries):
            seconds = r["prepare_seconds"] if task.kind == "segment" else r["seconds"]
            stats[job.boundaries[task.k] + 1].seconds += seconds
    dedup_info = {
        job.specs[job.boundaries[t.k]].name: r["info"] for t, r in results.items() if t.kind == "finish"
    }
    report = write_report(job.out, stats, dedup_info, len(job.shards))
    job.cleanup()
    return report
