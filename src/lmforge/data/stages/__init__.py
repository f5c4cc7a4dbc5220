"""The stage registry: a name in the config -> (its settings dataclass, the class that runs it)."""

from __future__ import annotations

from lmforge.data.dedup.exact import ExactDedup, ExactDedupConfig
from lmforge.data.dedup.minhash import MinHash, MinHashConfig
from lmforge.data.dedup.substring import ExactSubstring, ExactSubstringConfig
from lmforge.data.stages.c4 import C4Config, C4Quality
from lmforge.data.stages.extract import Extract, ExtractConfig
from lmforge.data.stages.fineweb import FineWebConfig, FineWebQuality
from lmforge.data.stages.gopher import (
    GopherQuality,
    GopherQualityConfig,
    GopherRepetition,
    GopherRepetitionConfig,
)
from lmforge.data.stages.language import Language, LanguageConfig
from lmforge.data.stages.lines import LineCorrections, LineCorrectionsConfig
from lmforge.data.stages.pii import Pii, PiiConfig
from lmforge.data.stages.url import UrlFilter, UrlFilterConfig

DOC_STAGES = {
    "url_filter": (UrlFilterConfig, UrlFilter),
    "extract": (ExtractConfig, Extract),
    "language": (LanguageConfig, Language),
    "gopher_repetition": (GopherRepetitionConfig, GopherRepetition),
    "gopher_quality": (GopherQualityConfig, GopherQuality),
    "line_corrections": (LineCorrectionsConfig, LineCorrections),
    "c4": (C4Config, C4Quality),
    "fineweb": (FineWebConfig, FineWebQuality),
    "pii": (PiiConfig, Pii),
}
DEDUP_STAGES = {
    "exact_dedup": (ExactDedupConfig, ExactDedup),
    "minhash": (MinHashConfig, MinHash),
    "exact_substring": (ExactSubstringConfig, ExactSubstring),
}
