"""URL filter (RefinedWeb §3.1 / App. G.1): domain blocklist, then hard, soft and strict word lists."""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import regex

from lmforge.data.document import Document
from lmforge.data.stages.base import Stage
from lmforge.errors import LmforgeError

_SPLIT_RE = regex.compile(r"[^a-zA-Z0-9]+")
_NON_ALNUM_RE = regex.compile(r"[^a-zA-Z0-9]")


@dataclass
class UrlFilterConfig:
    blocklist_file: str | None = None  # one domain per line (plain or .gz), e.g. the UT1 "adult" list
    extra_domains: list[str] = field(default_factory=list)  # e.g. RefinedWeb's curated-source domains
    hard_words: str = "default"  # file path, or "default" for the bundled lists, or "none"
    soft_words: str = "default"
    strict_subwords: str = "default"
    soft_threshold: int = 2  # distinct soft words needed to drop


def _read_lines(path: str, asset: str) -> set[str]:
    """Lower-cased non-empty lines of ``path`` (or the bundled asset when ``path`` is "default")."""
    if path == "none":
        return set()
    if path == "default":
        text = resources.files("lmforge.data").joinpath("assets", asset).read_text(encoding="utf-8")
    else:
        p = Path(path)
        if not p.is_file():
            raise LmforgeError(f"url_filter: word/domain list {path!r} not found")
        opener = gzip.open if p.suffix == ".gz" else open
        with opener(p, "rt", encoding="utf-8", errors="replace") as f:
            text = f.read()
    return {line.strip().lower() for line in text.splitlines() if line.strip()}


class UrlFilter(Stage):
    """Drops pages by URL. Documents without a URL pass (nothing to judge)."""

    name = "url_filter"
    config_class = UrlFilterConfig

    def __init__(self, cfg: UrlFilterConfig):
        super().__init__(cfg)
        self.domains = _read_lines(cfg.blocklist_file, "") if cfg.blocklist_file else set()
        self.domains |= {d.lower().strip() for d in cfg.extra_domains}
        self.hard = _read_lines(cfg.hard_words, "url_hard_words.txt")
        self.soft = _read_lines(cfg.soft_words, "url_soft_words.txt")
        strict = sorted(
            _NON_ALNUM_RE.sub("", w) for w in _read_lines(cfg.strict_subwords, "url_strict_subwords.txt")
        )
        strict = [w for w in strict if w]
        self.strict_re = regex.compile("|".join(map(regex.escape, strict))) if strict else None

    def _blocked_host(self, url: str) -> bool:
        """The host or any parent domain of it is listed (covers both domain and subdomain entries)."""
        try:
            host = (urlsplit(url).hostname or "").rstrip(".")
        except ValueError:
            return False
        parts = host.split(".")
        return any(".".join(parts[i:]) in self.domains for i in range(len(parts) - 1))

    def __call__(self, doc: Document) -> str | None:
        url = doc.url
        if not url:
            return None
        if self.domains and self._blocked_host(url):
            return "domain"
        pieces = {p.lower() for p in _SPLIT_RE.split(url) if p}
        if pieces & self.hard:
            return "hard_word"
        if len(pieces & self.soft) >= self.cfg.soft_threshold:
            return "soft_words"
        if self.strict_re is not None and self.strict_re.search(_NON_ALNUM_RE.sub("", url).lower()):
            return "strict_subword"
        return None
