"""The server's counters in Prometheus' text exposition format, written by hand (one small class
beats a dependency): requests by status, tokens in and out, running and waiting requests, batch size,
time to first token and inter-token latency."""

from __future__ import annotations

import bisect
import threading
from collections import Counter

PREFIX = "lmforge_"


class Histogram:
    """Counts per upper bound (``le``), as Prometheus histograms are: quantiles come from the buckets."""

    def __init__(self, bounds: list[float]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def lines(self, name: str) -> list[str]:
        out, total = [], 0
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts):
            total += count
            out.append(f'{name}_bucket{{le="{bound}"}} {total}')
        return [*out, f"{name}_sum {self.sum}", f"{name}_count {total}"]


LATENCY = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]


class Metrics:
    """Updated by the HTTP handlers and the engine thread (hence the lock), read by ``GET /metrics``."""

    def __init__(self, max_batch: int):
        self.lock = threading.Lock()
        self.requests: Counter[int] = Counter()  # by HTTP status
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.running = 0
        self.waiting = 0
        self.batch = Histogram([b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b < max_batch] + [max_batch])
        self.ttft = Histogram(LATENCY)
        self.itl = Histogram(LATENCY)

    def request_done(self, status: int) -> None:
        with self.lock:
            self.requests[status] += 1

    def render(self) -> str:
        """The exposition text (``text/plain; version=0.0.4``)."""
        with self.lock:
            rows = [
                ("requests_total", "counter", "HTTP requests to /v1 by status", None),
                *[
                    (f'requests_total{{status="{s}"}}', None, None, n)
                    for s, n in sorted(self.requests.items())
                ],
                ("prompt_tokens_total", "counter", "prompt tokens admitted", self.prompt_tokens),
                ("generation_tokens_total", "counter", "tokens generated", self.generation_tokens),
                ("requests_running", "gauge", "engine requests holding a slot", self.running),
                ("requests_waiting", "gauge", "engine requests waiting for a slot", self.waiting),
            ]
            out = []
            for name, kind, about, value in rows:
                if kind is not None:
                    out += [f"# HELP {PREFIX}{name} {about}", f"# TYPE {PREFIX}{name} {kind}"]
                if value is not None:
                    out.append(f"{PREFIX}{name} {value}")
            for name, about, hist in (
                ("batch_size", "running requests per decode step", self.batch),
                ("time_to_first_token_seconds", "from arrival to the first token", self.ttft),
                ("inter_token_latency_seconds", "between consecutive tokens of a request", self.itl),
            ):
                out += [f"# HELP {PREFIX}{name} {about}", f"# TYPE {PREFIX}{name} histogram"]
                out += hist.lines(PREFIX + name)
        return "\n".join(out) + "\n"
