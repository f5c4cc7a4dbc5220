"""HTML -> text with trafilatura (FineWeb's settings), a per-document timeout, and RefinedWeb's clean-up."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import regex

from lmforge.data.document import Document
from lmforge.data.stages.base import Stage

# A scheme URL, a www. host, or a bare IPv4 address, with whatever path follows (RW §3.1 "remove all URLs").
_URL_RE = regex.compile(
    r"(?:\b(?:https?|ftp)://|\bwww\.)\S+|\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?(?:/\S*)?", regex.IGNORECASE
)


@dataclass
class ExtractConfig:
    favor_precision: bool = True
    include_comments: bool = False
    deduplicate: bool = True
    timeout: float = 1.0  # seconds per page; 0 disables (datatrove HEAD uses 1 s)
    max_newlines: int = 0  # cap runs of newlines (RefinedWeb: 2); 0 keeps them
    remove_urls: bool = False  # RefinedWeb removes URLs from the text; FineWeb does not


class _Timeout(Exception):
    pass


@contextmanager
def _deadline(seconds: float):
    """Raise ``_Timeout`` in this thread after ``seconds`` (SIGALRM; only possible in the main thread).

    Workers (multiprocessing and Ray) run tasks in their main thread; elsewhere the limit is not enforced.
    """
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise _Timeout

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Extract(Stage):
    """Turns HTML documents into text; documents that are already text pass through unchanged."""

    name = "extract"
    config_class = ExtractConfig

    def __init__(self, cfg: ExtractConfig):
        import trafilatura  # noqa: F401  (fail at build time, not on the first page, if it is missing)

        super().__init__(cfg)
        self.newlines_re = regex.compile(rf"\n{{{cfg.max_newlines + 1},}}") if cfg.max_newlines else None

    def __call__(self, doc: Document) -> str | None:
        if not doc.html:
            return None
        import trafilatura

        try:
            with _deadline(self.cfg.timeout):
                text = trafilatura.extract(
                    doc.text,
                    favor_precision=self.cfg.favor_precision,
                    include_comments=self.cfg.include_comments,
                    deduplicate=self.cfg.deduplicate,
                )
        except _Timeout:
            return "timeout"
        except Exception:  # trafilatura/lxml raise many types on broken markup; the page is the problem
            return "extract_error"
        doc.html = False
        if self.cfg.remove_urls and text:
            text = _URL_RE.sub("", text)
        if self.newlines_re is not None and text:
            text = self.newlines_re.sub("\n" * self.cfg.max_newlines, text)
        doc.text = (text or "").strip()
        return None if doc.text else "empty"


def reset_extractor_state() -> None:
    """Forget trafilatura's cross-document dedup cache, so a shard's output never depends on what the same
    worker processed before it (the same input then gives the same output under any executor)."""
    from trafilatura.deduplication import LRU_TEST

    LRU_TEST.clear()
