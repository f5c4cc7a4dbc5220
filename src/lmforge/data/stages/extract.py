"""HTML -> text with trafilatura (FineWeb's settings) or resiliparse (DCLM's engine, ~10x faster, lower F1:
docs/data.md), a per-document timeout, and RefinedWeb's clean-up."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Literal

import regex

from lmforge.data.document import Document
from lmforge.data.stages.base import Stage
from lmforge.errors import LmforgeError

# A scheme URL, a www. host, or a bare IPv4 address, with whatever path follows (RW §3.1 "remove all URLs").
_URL_RE = regex.compile(
    r"(?:\b(?:https?|ftp)://|\bwww\.)\S+|\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?(?:/\S*)?", regex.IGNORECASE
)
# resiliparse puts a blank line between blocks and keeps the spaces around them; trafilatura writes one
# block per line, the layout the later filters' thresholds (newlines per word, short lines) were set on.
_BLOCK_GAP_RE = regex.compile(r"\s*\n\s*")
# lxml, trafilatura's parser, stops at this depth; resiliparse's main-content pass, one C call that SIGALRM
# cannot interrupt, grows with depth squared (10,000 nested <div>: 2.6 s). Real pages stay far below it.
MAX_DEPTH = 256
_DEEPER_THAN_MAX = " > ".join(["*"] * (MAX_DEPTH + 1))  # matches an element with MAX_DEPTH ancestors


@dataclass
class ExtractConfig:
    engine: Literal["trafilatura", "resiliparse"] = "trafilatura"
    favor_precision: bool = True  # trafilatura only
    include_comments: bool = False  # both engines: keep a page's comment section
    deduplicate: bool = True  # trafilatura only
    timeout: float = 1.0  # seconds per page; 0 disables (datatrove HEAD uses 1 s)
    max_newlines: int = 0  # cap runs of newlines (RefinedWeb: 2); 0 keeps them
    remove_urls: bool = False  # RefinedWeb removes URLs from the text; FineWeb does not


class _Timeout(Exception):
    pass


class _TooDeep(Exception):
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


def _trafilatura(cfg: ExtractConfig) -> Callable[[str], str | None]:
    import trafilatura

    return partial(
        trafilatura.extract,
        favor_precision=cfg.favor_precision,
        include_comments=cfg.include_comments,
        deduplicate=cfg.deduplicate,
    )


def _resiliparse(cfg: ExtractConfig) -> Callable[[str], str | None]:
    """Main content without image alt texts (they score as boilerplate on both extraction benchmarks)."""
    try:
        from resiliparse.extract.html2text import extract_plain_text
        from resiliparse.parse.html import HTMLTree
    except ImportError as e:
        raise LmforgeError(
            "extract: engine=resiliparse needs the resiliparse package (pip install 'lmforge[data]')"
        ) from e

    def extract(html: str) -> str:
        tree = HTMLTree.parse(html)
        if tree.document.query_selector(_DEEPER_THAN_MAX) is not None:
            raise _TooDeep
        text = extract_plain_text(tree, main_content=True, alt_texts=False, comments=cfg.include_comments)
        return _BLOCK_GAP_RE.sub("\n", text)

    return extract


ENGINES = {"trafilatura": _trafilatura, "resiliparse": _resiliparse}


class Extract(Stage):
    """Turns HTML documents into text; documents that are already text pass through unchanged."""

    name = "extract"
    config_class = ExtractConfig

    def __init__(self, cfg: ExtractConfig):
        super().__init__(cfg)
        self.extract = ENGINES[cfg.engine](cfg)  # imported now: a missing package fails before any work
        self.newlines_re = regex.compile(rf"\n{{{cfg.max_newlines + 1},}}") if cfg.max_newlines else None

    def __call__(self, doc: Document) -> str | None:
        if not doc.html:
            return None
        try:
            with _deadline(self.cfg.timeout):
                text = self.extract(doc.text)
        except _Timeout:
            return "timeout"
        except _TooDeep:
            return "too_deep"
        except Exception:  # both engines raise many types on broken markup; the page is the problem
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
