"""Executors: run a job's task groups in order, the tasks inside a group in parallel.

``local`` uses a process pool (``workers`` processes; 1 runs in-process), ``ray`` sends each task to a Ray
cluster. Both call the same ``run_task`` on the same files, so their output is identical.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator
from typing import Any

from tqdm.auto import tqdm

from lmforge.data.pipeline import Job, Task, run_task
from lmforge.errors import LmforgeError

Results = Iterator[tuple[Task, dict[str, Any]]]
_JOB: Job | None = None  # a pool worker's job, set once by the initializer


def _init_worker(job: Job) -> None:
    global _JOB
    _JOB = job


def _pool_task(task: Task) -> tuple[Task, dict[str, Any]]:
    assert _JOB is not None
    return task, run_task(_JOB, task)


class LocalExecutor:
    def __init__(self, job: Job):
        self.job = job
        self.pool = None
        if job.cfg.workers > 1:  # forkserver: workers never inherit threads or half-initialised libraries
            self.pool = mp.get_context("forkserver").Pool(job.cfg.workers, _init_worker, (job,))

    def run(self, tasks: list[Task]) -> Results:
        if self.pool is None:
            return ((t, run_task(self.job, t)) for t in tasks)
        return self.pool.imap_unordered(_pool_task, tasks)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


class RayExecutor:
    def __init__(self, job: Job):
        try:
            import ray
        except ImportError as e:
            raise LmforgeError("executor=ray needs the ray package (pip install 'lmforge[data]')") from e
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            if job.cfg.ray.address:
                try:
                    ray.init(address=job.cfg.ray.address, log_to_driver=False)
                except ConnectionError as e:
                    raise LmforgeError(
                        f"ray.address={job.cfg.ray.address}: no Ray cluster there ({str(e).split('.')[0]}); "
                        "start one (`ray start --head`), give its address, or drop ray.address to run Ray "
                        "on this machine"
                    ) from None
            else:
                cpus = job.cfg.ray.num_cpus or job.cfg.workers
                ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        self.remote = ray.remote(num_cpus=1)(run_task)
        self.job_ref = ray.put(job)

    def run(self, tasks: list[Task]) -> Results:
        pending = {self.remote.remote(self.job_ref, t): t for t in tasks}
        while pending:
            ready, _ = self.ray.wait(list(pending), num_returns=1)
            for ref in ready:
                yield pending.pop(ref), self.ray.get(ref)

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def _label(job: Job, task: Task) -> str:
    if task.kind == "segment":
        return f"segment {task.k}"
    return f"{job.specs[job.boundaries[task.k]].name} {task.kind}"


def execute(job: Job) -> dict[Task, dict[str, Any]]:
    """Run every task group of ``job`` (finished tasks are skipped) and return each task's result."""
    executor = RayExecutor(job) if job.cfg.executor == "ray" else LocalExecutor(job)
    results: dict[Task, dict[str, Any]] = {}
    try:
        for group in job.phases():
            todo = []
            for task in group:
                prior = job.done(task)
                if prior is None:
                    todo.append(task)
                else:
                    results[task] = prior
            bar = tqdm(
                total=len(group),
                initial=len(group) - len(todo),
                desc=_label(job, group[0]),
                disable=not job.cfg.progress,
            )
            for task, result in executor.run(todo):
                results[task] = result
                bar.update()
            bar.close()
    finally:
        executor.close()
    return results
