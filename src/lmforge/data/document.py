"""The record every stage reads and writes, and the counters every stage keeps."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Document:
    """One web page or text. ``html`` is true until extraction has turned the markup into text."""

    text: str
    id: str
    url: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    html: bool = False

    def to_record(self) -> dict[str, Any]:
        """The JSON record; ``"html": true`` marks markup not extracted yet (e.g. between dedup phases)."""
        rec = {"text": self.text, "id": self.id, "url": self.url, "metadata": self.metadata}
        if self.html:
            rec["html"] = True
        return rec


@dataclass(slots=True)
class Skip:
    """A record a reader could not turn into a document; ``reason`` names why, for the funnel."""

    reason: str


@dataclass
class StageStats:
    """What one stage saw and let through; summed over shards to make the funnel report."""

    name: str
    docs_in: int = 0
    docs_out: int = 0
    chars_in: int = 0
    chars_out: int = 0
    seconds: float = 0.0
    removed: Counter = field(default_factory=Counter)

    def add(self, other: StageStats) -> None:
        self.docs_in += other.docs_in
        self.docs_out += other.docs_out
        self.chars_in += other.chars_in
        self.chars_out += other.chars_out
        self.seconds += other.seconds
        self.removed.update(other.removed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "docs_in": self.docs_in,
            "docs_out": self.docs_out,
            "chars_in": self.chars_in,
            "chars_out": self.chars_out,
            "seconds": round(self.seconds, 4),
            "removed": dict(sorted(self.removed.items())),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageStats:
        return cls(
            d["name"],
            d["docs_in"],
            d["docs_out"],
            d["chars_in"],
            d["chars_out"],
            d["seconds"],
            Counter(d["removed"]),
        )
