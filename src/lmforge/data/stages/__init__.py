"""The stage registry: a built-in stage by its short name, a stage of your own by its import path.

A ``stages`` entry ``module:attribute`` names a ``Stage`` or ``DedupStage`` subclass (options checked
against its ``config_class``) or a plain function ``doc -> bool`` (see ``FunctionStage``); it then runs
exactly like a built-in: same counting, same workers, same checks before any work.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from pathlib import Path

from lmforge.config import ConfigError
from lmforge.data.dedup.base import DedupStage
from lmforge.data.dedup.exact import ExactDedup
from lmforge.data.dedup.minhash import MinHash
from lmforge.data.dedup.substring import ExactSubstring
from lmforge.data.document import Document
from lmforge.data.stages.base import Stage
from lmforge.data.stages.c4 import C4Quality
from lmforge.data.stages.extract import Extract
from lmforge.data.stages.fineweb import FineWebQuality
from lmforge.data.stages.gopher import GopherQuality, GopherRepetition
from lmforge.data.stages.language import Language
from lmforge.data.stages.lines import LineCorrections
from lmforge.data.stages.pii import Pii
from lmforge.data.stages.url import UrlFilter

# name -> (its settings dataclass, the class that runs it)
DOC_STAGES = {
    c.name: (c.config_class, c)
    for c in (
        UrlFilter,
        Extract,
        Language,
        GopherRepetition,
        GopherQuality,
        LineCorrections,
        C4Quality,
        FineWebQuality,
        Pii,
    )
}
DEDUP_STAGES = {c.name: (c.config_class, c) for c in (ExactDedup, MinHash, ExactSubstring)}

StageTarget = type[Stage] | type[DedupStage] | Callable[[Document], bool]
_NAME_RE = re.compile(r"[A-Za-z_][\w-]*")  # usable in stage.<name>.<key>=... and as a folder name


def find_stage(key: str, where: str) -> StageTarget:
    """What the ``stages`` entry ``key`` names; a user's module is imported here. Fails naming ``where``."""
    if ":" not in key:
        known = {**DOC_STAGES, **DEDUP_STAGES}
        if key not in known:
            raise ConfigError(
                f"{where}: unknown stage {key!r}; known stages: {', '.join(known)} "
                "(a stage of your own goes by its import path, module:attribute)"
            )
        return known[key][1]
    module, _, attr = key.partition(":")
    if not module or not attr:
        raise ConfigError(f"{where}: {key!r} is not an import path of the form module:attribute")
    try:
        obj = importlib.import_module(module)
    except Exception as e:  # not found, or the module's own code failed
        raise ConfigError(
            f"{where}: cannot import {module!r} for stage {key!r}: {type(e).__name__}: {e}"
        ) from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{where}: cannot import {attr!r} from {module!r} for stage {key!r}")
        obj = getattr(obj, part)
    if isinstance(obj, type) and issubclass(obj, (Stage, DedupStage)):
        return obj
    if callable(obj) and not isinstance(obj, type):
        return obj
    raise ConfigError(
        f"{where}: {key} is neither a subclass of lmforge.data.stages.base.Stage (or DedupStage) "
        "nor a function doc -> bool"
    )


def stage_name(target: StageTarget, key: str, where: str) -> str:
    """The report's row and the ``stage.<name>``/``skip`` name: the class's own ``name``, else the attribute
    named in ``key``. A stage of your own may not take a built-in's name."""
    own = isinstance(target, type) and target.name not in (Stage.name, DedupStage.name)
    name = target.name if own else key.rpartition(":")[2].rpartition(".")[2]  # type: ignore[union-attr]
    if ":" in key:
        if not _NAME_RE.fullmatch(name):
            raise ConfigError(f"{where}: stage name {name!r} of {key} must be letters, digits, _ or -")
        if name in DOC_STAGES or name in DEDUP_STAGES:
            raise ConfigError(f"{where}: {key} is named {name!r} like a built-in stage; give it another name")
    return name


def import_root(key: str) -> str | None:
    """The folder the driver imported a user stage's top-level package or module from, so workers (a Ray
    worker does not share the driver's ``sys.path``) can import it from there too."""
    if ":" not in key:
        return None
    top = sys.modules[key.partition(":")[0].partition(".")[0]]
    if hasattr(top, "__path__"):  # a package (regular or namespace): the folder holding it
        return str(Path(next(iter(top.__path__))).parent)
    file = getattr(top, "__file__", None)
    return str(Path(file).parent) if file else None
