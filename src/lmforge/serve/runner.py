"""The engine thread: one background thread owns the ``Engine`` (the model is not thread-safe).

HTTP handlers run on the asyncio loop. They hand a job (one engine request per prompt and choice) to
the thread through a thread-safe inbox, and the thread passes each ``StepOutput`` back to the job's
asyncio queue with ``loop.call_soon_threadsafe``. Aborts travel the same inbox, so a client that
leaves frees its slot before the next step. Admission is bounded: past ``max_batch + max_queue``
engine requests in flight, ``submit`` refuses (the server answers 429) instead of queueing without end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from lmforge.errors import LmforgeError
from lmforge.infer.engine import Engine, StepOutput
from lmforge.infer.sampling import SamplingParams
from lmforge.serve.metrics import Metrics

log = logging.getLogger("lmforge.serve")


class Overloaded(Exception):
    """Every slot is busy and the waiting queue is full."""


class Unavailable(Exception):
    """The server is shutting down, or the engine failed."""


class RequestTimeout(Exception):
    """A request ran past the server's timeout and was aborted."""


Item = tuple[int, StepOutput] | Exception  # (choice index, output), or why the job ended early


@dataclass
class Job:
    """One HTTP request's engine requests (one per prompt and choice); their outputs share one queue."""

    requests: list[tuple[list[int], SamplingParams]]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Item] = field(default_factory=asyncio.Queue)
    arrived: float = field(default_factory=time.perf_counter)
    running: dict[int, int] = field(default_factory=dict)  # engine id -> choice index (engine thread)

    def put(self, item: Item) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class EngineRunner:
    """Drives an engine from its own thread; ``submit``, ``outputs`` and ``abort`` are for the loop."""

    def __init__(self, engine: Engine, metrics: Metrics, max_queue: int):
        self.engine, self.metrics = engine, metrics
        self.capacity = engine.max_batch + max_queue
        self.inbox: queue.SimpleQueue[tuple[str, Job | None]] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.admitted = 0  # engine requests submitted and not yet finished (under lock)
        self.closing = False
        self.thread = threading.Thread(target=self._run, name="lmforge-engine", daemon=True)
        self._jobs: dict[int, Job] = {}  # engine id -> its job (engine thread only)
        self._last: dict[int, float] = {}  # engine id -> when its last token came out

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Cancel what is still running or queued (each job gets ``Unavailable``) and end the thread."""
        with self.lock:
            self.closing = True
        if self.thread.is_alive():
            self.inbox.put(("stop", None))
            self.thread.join()

    def submit(self, requests: list[tuple[list[int], SamplingParams]]) -> Job:
        """Queue a job for the engine thread; raises Overloaded past capacity, Unavailable when closing."""
        with self.lock:
            if self.closing:
                raise Unavailable("the server is shutting down")
            if self.admitted + len(requests) > self.capacity:
                raise Overloaded(f"all {self.engine.max_batch} slots are busy and the queue is full")
            self.admitted += len(requests)
        job = Job(requests, asyncio.get_running_loop())
        self.inbox.put(("add", job))
        return job

    def abort(self, job: Job) -> None:
        self.inbox.put(("abort", job))

    async def outputs(self, job: Job, timeout: float) -> AsyncIterator[tuple[int, StepOutput]]:
        """The job's (choice, output) pairs until every choice has finished; a consumer that stops early
        (client gone, error) or a job past ``timeout`` seconds aborts it, freeing its slots."""
        left = len(job.requests)
        deadline = job.arrived + timeout
        try:
            while left:
                try:
                    item = await asyncio.wait_for(job.queue.get(), deadline - time.perf_counter())
                except TimeoutError:
                    raise RequestTimeout(f"the request ran past the server's {timeout:g} s timeout") from None
                if isinstance(item, Exception):
                    left = 0  # the engine thread has dropped the job already
                    raise item
                left -= item[1].finished
                yield item
        finally:
            if left:
                self.abort(job)

    # The engine thread.

    def _run(self) -> None:
        while self._serve_inbox():
            if self.engine.has_work():
                self._step()

    def _serve_inbox(self) -> bool:
        """Apply the queued adds and aborts, waiting for one while idle; False once told to stop."""
        block = not self.engine.has_work()
        while True:
            try:
                kind, job = self.inbox.get(block=block)
            except queue.Empty:
                return True
            block = False
            if kind == "stop":
                self._fail_all(Unavailable("the server shut down before the request finished"))
                return False
            self._add(job) if kind == "add" else self._abort(job)
            self._gauges()

    def _add(self, job: Job) -> None:
        for index, (prompt, params) in enumerate(job.requests):
            try:
                rid = self.engine.add_request(prompt, params)
            except LmforgeError as e:  # the handlers check first; this is the engine's last word
                self._abort(job)
                self._release(len(job.requests) - index)
                job.put(e)
                return
            job.running[rid] = index
            self._jobs[rid] = job
            with self.metrics.lock:
                self.metrics.prompt_tokens += len(prompt)

    def _abort(self, job: Job) -> None:
        for rid in job.running:
            self.engine.abort(rid)
            self._forget(rid)
        self._release(len(job.running))
        job.running.clear()

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as e:  # a device error or a bug: fail the jobs rather than leave them hanging
            log.exception("engine step failed")
            self._fail_all(Unavailable(f"the engine failed: {e}"))
            return
        now, finished = time.perf_counter(), 0
        with self.metrics.lock:
            self.metrics.batch.observe(len(outputs))
            for out in outputs:
                job = self._jobs[out.request_id]
                last = self._last.get(out.request_id)
                hist, since = (self.metrics.ttft, job.arrived) if last is None else (self.metrics.itl, last)
                hist.observe(now - since)
                self._last[out.request_id] = now
                self.metrics.generation_tokens += len(out.token_ids)
        for out in outputs:
            job = self._jobs[out.request_id]
            job.put((job.running[out.request_id], out))
            if out.finished:
                del job.running[out.request_id]
                self._forget(out.request_id)
                finished += 1
        self._release(finished)
        self._gauges()

    def _fail_all(self, error: Exception) -> None:
        """End every job, running, queued in the engine or still in the inbox, with ``error``."""
        for job in {id(j): j for j in self._jobs.values()}.values():
            self._abort(job)
            job.put(error)
        while True:
            try:
                kind, job = self.inbox.get(block=False)
            except queue.Empty:
                break
            if kind == "add":
                self._release(len(job.requests))
                job.put(error)
        self._gauges()

    def _forget(self, rid: int) -> None:
        self._jobs.pop(rid, None)
        self._last.pop(rid, None)

    def _release(self, n: int) -> None:
        with self.lock:
            self.admitted -= n

    def _gauges(self) -> None:
        running = len(self.engine.running)
        with self.lock:
            waiting = self.admitted - running
        with self.metrics.lock:
            self.metrics.running, self.metrics.waiting = running, waiting
