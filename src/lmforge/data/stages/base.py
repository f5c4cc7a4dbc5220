"""The per-document stage interface: look at one document, maybe edit it, keep it or name why it goes."""

from __future__ import annotations

from typing import Any

from lmforge.data.document import Document


class Stage:
    """A per-document step. ``__call__`` returns ``None`` to keep the (possibly edited) document, or the
    reason it is dropped; the runner counts documents, characters and reasons, so stages stay small."""

    name = "stage"

    def __init__(self, cfg: Any):
        self.cfg = cfg  # the stage's own config dataclass, validated before any work

    def __call__(self, doc: Document) -> str | None:  # pragma: no cover - interface
        raise NotImplementedError
