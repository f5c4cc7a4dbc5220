"""``lmforge data``: a RefinedWeb-style pipeline from raw web pages to a clean, deduplicated corpus.

A pipeline is a reader, then a list of small stages over :class:`Document` records, then a writer.
Per-document stages run shard by shard in parallel; dedup stages split the work into phases that meet on
disk, so the same pipeline runs on one machine (multiprocessing) or on many (Ray).
"""

from lmforge.data.document import Document, Skip, StageStats

__all__ = ["Document", "Skip", "StageStats"]
