"""The per-document stage interface: look at one document, maybe edit it, keep it or name why it goes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lmforge.data.document import Document
from lmforge.errors import LmforgeError


class Stage:
    """A per-document step. ``__call__`` returns ``None`` to keep the (possibly edited) document, or the
    reason it is dropped; the runner counts documents, characters and reasons, so stages stay small.

    ``config_class`` is the dataclass the stage's YAML options are checked against before any work starts
    (``None``: the stage takes no options); ``name`` is its row in the report.
    """

    name = "stage"
    config_class: type | None = None

    def __init__(self, cfg: Any):
        self.cfg = cfg  # an instance of config_class, validated before any work

    def __call__(self, doc: Document) -> str | None:  # pragma: no cover - interface
        raise NotImplementedError


class FunctionStage(Stage):
    """A plain function ``doc -> bool`` run as a stage: True keeps the document (which the function may
    edit), False drops it as ``rejected``. Anything else stops the run instead of being guessed at: a
    forgotten ``return`` gives None."""

    reason = "rejected"

    def __init__(self, fn: Callable[[Document], bool], name: str):
        super().__init__(None)
        self.fn, self.name = fn, name

    def __call__(self, doc: Document) -> str | None:
        keep = self.fn(doc)
        if keep not in (True, False):
            raise LmforgeError(
                f"stage {self.name}: {self.fn.__module__}.{getattr(self.fn, '__qualname__', self.fn)} "
                f"returned {keep!r}; a function stage returns True (keep) or False (drop)"
            )
        return None if keep else self.reason
