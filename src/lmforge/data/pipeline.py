"""A run as a list of tasks: per-shard segments of per-document stages, separated by dedup phases.

The stage list is cut at every dedup stage. Segment 0 reads the input shards; each later segment reads the
previous segment's intermediate shard and applies the dedup decisions. Between two segments the dedup stage
runs its ``combine`` tasks and its ``finish`` task. Every task leaves a done-marker holding its stats, so a
re-run skips finished work, and every task depends only on files, so any executor gives the same output.
With ``write_dropped``, a segment also writes what its stages drop, one file per stage and shard, committed
with the shard.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from lmforge.atomic import atomic_file, remove_leftovers
from lmforge.config import to_dict
from lmforge.data.config import RUN_ONLY_KEYS, PipelineConfig, StageSpec, validate
from lmforge.data.dedup.base import DedupStage
from lmforge.data.document import Document, Skip, StageStats
from lmforge.data.readers import ReaderConfig, discover, make_shards, read_jsonl, read_shard
from lmforge.data.stages.base import Stage
from lmforge.data.stages.extract import Extract, reset_extractor_state
from lmforge.data.writers import DocumentWriter, DroppedWriter, shard_path
from lmforge.errors import LmforgeError

INTERMEDIATE = "jsonl.zst"


@dataclass(frozen=True)
class Task:
    """One unit of work. kind: "segment" (k, shard), "combine" (k, item) or "finish" (k)."""

    kind: str
    k: int
    arg: Any = None

    @property
    def marker(self) -> str:
        if self.kind == "segment":
            tail = f"{self.arg:05d}"
        elif self.kind == "combine":
            tail = "_".join(f"{x:05d}" for x in self.arg)
        else:
            tail = "all"
        return f"{self.kind}{self.k}/{tail}.json"


@dataclass
class Job:
    """Everything a worker needs to run any task of a run (picklable; stages are built lazily per process)."""

    cfg: PipelineConfig
    specs: list[StageSpec]
    shards: list[list[Path]]
    out: Path
    _built: list[Any] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def create(cls, cfg: PipelineConfig) -> Job:
        """Check everything that can be checked before work starts: config, stages, input files."""
        specs = validate(cfg)
        files = discover(cfg.input, cfg.reader.format)
        job = cls(cfg, specs, make_shards(files, cfg.reader), Path(cfg.output))
        job.stages  # noqa: B018  build once here so a bad stage setting (e.g. a missing list file) fails now
        return job

    @property
    def work(self) -> Path:
        return self.out / "_work"

    @property
    def stages(self) -> list[Stage | DedupStage]:
        if self._built is None:
            self._built = [s.build(self.work / f"{i:02d}_{s.name}") for i, s in enumerate(self.specs)]
        return self._built

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_built"] = None  # rebuilt in the worker: models and compiled lists do not travel
        return state

    @cached_property
    def boundaries(self) -> list[int]:
        """Positions of the dedup stages; segment k runs the per-document stages between boundaries."""
        return [i for i, s in enumerate(self.specs) if s.dedup]

    def segment_range(self, k: int) -> tuple[int, int]:
        start = 0 if k == 0 else self.boundaries[k - 1] + 1
        end = self.boundaries[k] if k < len(self.boundaries) else len(self.specs)
        return start, end

    @property
    def n_segments(self) -> int:
        return len(self.boundaries) + 1

    def stage_names(self) -> list[str]:
        return ["read"] + [s.name for s in self.specs]

    def dropped_writer(self, k: int, shard: int) -> AbstractContextManager[DroppedWriter | None]:
        """Where segment k writes what its stages drop in ``shard``: its own stages and, after a boundary, the
        dedup stage whose decisions it applies (the reader's skips have no document to write)."""
        if not self.cfg.write_dropped:
            return nullcontext()
        start, end = self.segment_range(k)
        names = self.stage_names()
        stages = {pos: names[pos] for pos in range(start if k else 1, end + 1)}
        return DroppedWriter(self.out / "_dropped", stages, shard, self.cfg.output_format)

    def intermediate(self, k: int, shard: int) -> Path:
        return shard_path(self.work / f"seg{k}", shard, INTERMEDIATE)

    def read_intermediate(self, k: int, shard: int) -> Iterator[Document]:
        for item in read_jsonl(self.intermediate(k, shard), ReaderConfig()):
            if isinstance(item, Skip):
                raise LmforgeError(
                    f"intermediate shard {self.intermediate(k, shard)} is damaged ({item.reason})"
                )
            yield item

    def phases(self) -> list[list[Task]]:
        """Task groups in dependency order; tasks inside a group are independent."""
        shard_ids = range(len(self.shards))
        groups = []
        for k in range(self.n_segments):
            groups.append([Task("segment", k, s) for s in shard_ids])
            if k < len(self.boundaries):
                dedup = self.stages[self.boundaries[k]]
                groups.append([Task("combine", k, tuple(t)) for t in dedup.combine_tasks()])
                groups.append([Task("finish", k)])
        return [g for g in groups if g]

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with the run that wrote the output folder."""
        cfg = {k: v for k, v in to_dict(self.cfg).items() if k not in RUN_ONLY_KEYS}
        return {"config": cfg, "shards": [[str(f) for f in s] for s in self.shards]}

    def claim_output(self) -> None:
        """Start or resume a run in ``out``; refuse a folder that holds a run of another config or input."""
        self.work.mkdir(parents=True, exist_ok=True)
        path = self.work / "run.json"
        mine = json.loads(json.dumps(self.fingerprint()))
        if path.exists():
            theirs = json.loads(path.read_text(encoding="utf-8"))
            if theirs != mine:
                diff = sorted(
                    k
                    for k in set(theirs["config"]) | set(mine["config"])
                    if theirs["config"].get(k) != mine["config"].get(k)
                )
                what = f"config keys {', '.join(diff)}" if diff else "input files"
                raise LmforgeError(
                    f"{self.out} holds a run with different {what}; use another output folder or delete it"
                )
            remove_leftovers(self.out)  # half-written files of workers killed in an earlier attempt
        else:
            path.write_text(json.dumps(mine, indent=1), encoding="utf-8")

    def done(self, task: Task) -> dict[str, Any] | None:
        path = self.work / "done" / task.marker
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    def mark_done(self, task: Task, result: dict[str, Any]) -> None:
        with atomic_file(self.work / "done" / task.marker) as tmp:
            tmp.write_text(json.dumps(result), encoding="utf-8")

    def cleanup(self) -> None:
        """Drop intermediate shards and dedup files once the run is complete (markers and run.json stay)."""
        if self.cfg.keep_intermediate:
            return
        for p in self.work.iterdir():
            if p.is_dir() and p.name != "done":
                shutil.rmtree(p, ignore_errors=True)


def run_task(job: Job, task: Task) -> dict[str, Any]:
    """Run ``task`` unless its done-marker exists; return its result (stats) either way."""
    prior = job.done(task)
    if prior is not None:
        return prior
    if task.kind == "segment":
        result = _run_segment(job, task.k, task.arg)
    elif task.kind == "combine":
        dedup = job.stages[job.boundaries[task.k]]
        t0 = time.perf_counter()
        dedup.combine(task.arg, list(range(len(job.shards))))
        result = {"seconds": time.perf_counter() - t0}
    else:
        dedup = job.stages[job.boundaries[task.k]]
        t0 = time.perf_counter()
        info = dedup.finish(list(range(len(job.shards))), lambda s, k=task.k: job.read_intermediate(k, s))
        result = {"info": info, "seconds": time.perf_counter() - t0}
    job.mark_done(task, result)
    return result


def _source(
    job: Job, k: int, shard: int, stats: StageStats, dropped: DroppedWriter | None
) -> Iterator[Document]:
    """Segment k's input documents: the raw shard (k = 0) or the previous segment's output after dedup."""
    if k == 0:
        for item in read_shard(job.shards[shard], job.cfg.reader):
            stats.docs_in += 1
            if isinstance(item, Skip):
                stats.removed[item.reason] += 1
                continue
            stats.docs_out += 1
            stats.chars_out += len(item.text)
            yield item
        return
    boundary = job.boundaries[k - 1]
    dedup: DedupStage = job.stages[boundary]  # type: ignore[assignment]
    decisions = dedup.decisions(shard)
    remove = set(decisions.remove.tolist())
    for i, doc in enumerate(job.read_intermediate(k - 1, shard)):
        text = doc.text
        stats.docs_in += 1
        stats.chars_in += len(text)
        drop = i in remove
        if not drop and i in decisions.cuts:
            doc.text = decisions.cut(text, decisions.cuts[i])
            drop = len(doc.text) < decisions.min_chars_left
        if drop:
            stats.removed[dedup.reason] += 1
            if dropped is not None:
                doc.text = text  # as the stage received it
                dropped.write(boundary + 1, doc, dedup.reason)  # its row in the report
            continue
        stats.docs_out += 1
        stats.chars_out += len(doc.text)
        yield doc


def _run_segment(job: Job, k: int, shard: int) -> dict[str, Any]:
    start, end = job.segment_range(k)
    first = StageStats("read" if k == 0 else job.specs[start - 1].name)
    stages: list[Stage] = job.stages[start:end]  # type: ignore[assignment]
    stats = [StageStats(s.name) for s in job.specs[start:end]]
    positions = range(start + 1, end + 1)  # the stages' rows in the report (0 is read)
    if any(isinstance(s, Extract) for s in stages):
        reset_extractor_state()
    last = k == job.n_segments - 1
    target = shard_path(job.out, shard, job.cfg.output_format) if last else job.intermediate(k, shard)
    preparer = None if last else job.stages[end].preparer(shard)  # type: ignore[union-attr]
    t_start = time.perf_counter()
    sink_seconds = prep_seconds = 0.0
    with (
        DocumentWriter(target, job.cfg.output_format if last else INTERMEDIATE) as writer,
        job.dropped_writer(k, shard) as dropped,
    ):
        for doc in _source(job, k, shard, first, dropped):
            for pos, stage, st in zip(positions, stages, stats):
                text, html = doc.text, doc.html
                st.docs_in += 1
                st.chars_in += len(text)
                t0 = time.perf_counter()
                reason = stage(doc)
                st.seconds += time.perf_counter() - t0
                if reason is not None:
                    st.removed[reason] += 1
                    if dropped is not None:
                        t0 = time.perf_counter()
                        doc.text, doc.html = text, html  # as the stage received it; its metadata notes stay
                        dropped.write(pos, doc, reason)
                        sink_seconds += time.perf_counter() - t0
                    break
                st.docs_out += 1
                st.chars_out += len(doc.text)
            else:
                t0 = time.perf_counter()
                writer.write(doc)
                t1 = time.perf_counter()
                if preparer is not None:
                    preparer.add(doc)
                sink_seconds += t1 - t0
                prep_seconds += time.perf_counter() - t1
        t0 = time.perf_counter()
        if preparer is not None:
            preparer.close()
    prep_seconds += time.perf_counter() - t0
    first.seconds = (
        time.perf_counter() - t_start - sum(s.seconds for s in stats) - prep_seconds - sink_seconds
    )
    return {
        "stats": {
            str(start): first.to_dict(),
            **{str(start + 1 + i): s.to_dict() for i, s in enumerate(stats)},
        },
        "prepare_seconds": prep_seconds,
        "write_seconds": sink_seconds,
    }
