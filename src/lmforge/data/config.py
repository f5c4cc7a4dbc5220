"""The ``lmforge data`` config: input/output, executor, reader, and the ordered list of stages.

``stages`` is a list of ``{name: {parameters}}`` (or a bare name for the defaults), so a preset can be copied
and stages dropped, reordered or re-parameterised; a stage of your own is named by its import path
(``mypkg.filters:MyFilter``). From the command line, ``stage.<name>.<key>=value`` overrides a parameter of
every stage with that name and ``skip=[a, b]`` leaves stages out.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lmforge.config import ConfigError, from_dict, load_config
from lmforge.data.readers import ReaderConfig
from lmforge.data.writers import OutputFormat

if TYPE_CHECKING:
    from lmforge.data.dedup.base import DedupStage
    from lmforge.data.stages import StageTarget
    from lmforge.data.stages.base import Stage


@dataclass
class RayConfig:
    address: str | None = None  # None starts a local Ray; "auto" joins a running cluster
    num_cpus: int | None = None  # CPUs of a local Ray (default: workers)


@dataclass
class PipelineConfig:
    input: list[str] = field(default_factory=list)
    output: str = ""
    output_format: OutputFormat = "jsonl.zst"
    workers: int = 1
    executor: Literal["local", "ray"] = "local"
    ray: RayConfig = field(default_factory=RayConfig)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    stages: list[Any] = field(default_factory=list)
    stage: dict[str, dict[str, Any]] = field(default_factory=dict)
    skip: list[str] = field(default_factory=list)
    progress: bool = True
    keep_intermediate: bool = False  # keep the shards written between dedup phases
    write_dropped: bool = False  # also write what each stage drops, with the reason, under output/_dropped/


# Settings that change how a run is executed, not what it produces: a resumed run may change them.
RUN_ONLY_KEYS = ("workers", "executor", "ray", "progress", "keep_intermediate")


@dataclass(frozen=True)
class StageSpec:
    """One stage of a run, as plain data: it travels to the workers, which import a user's stage themselves.

    ``key`` is the entry as written in ``stages`` (a built-in's name or ``module:attribute``); ``name`` is
    the stage's row in the report and the name that ``stage.<name>.<key>`` and ``skip`` use.
    """

    name: str
    key: str
    options: dict[str, Any]
    index: int  # position in the config's ``stages``, for messages
    dedup: bool
    import_root: str | None = None  # where the driver found a user stage's module

    @property
    def where(self) -> str:
        return f"stages[{self.index}]"

    def target(self) -> StageTarget:
        """The stage's class or function, imported in whichever process runs it."""
        from lmforge.data.stages import find_stage

        if self.import_root is not None and self.import_root not in sys.path:
            sys.path.append(self.import_root)  # appended: never shadows what the worker has installed
        return find_stage(self.key, self.where)

    def params(self, target: StageTarget) -> Any:
        """The options checked against the stage's ``config_class`` (keys and types)."""
        cls = target.config_class if isinstance(target, type) else None
        if cls is not None:
            return from_dict(cls, self.options, f"{self.where}.{self.key}")
        if self.options:
            raise ConfigError(
                f"unknown config key {self.where}.{self.key}.{next(iter(self.options))}: {self.key} takes "
                "no options (a stage with options is a Stage subclass with a config_class)"
            )
        return None

    def build(self, work: Path) -> Stage | DedupStage:
        """The runnable stage; ``work`` is a dedup stage's folder for its files."""
        from lmforge.data.stages.base import FunctionStage

        target = self.target()
        params = self.params(target)
        if not isinstance(target, type):
            return FunctionStage(target, self.name)
        return target(params, work) if self.dedup else target(params)  # type: ignore[call-arg]


def stage_specs(cfg: PipelineConfig) -> list[StageSpec]:
    """Validated stage list: known stages (a user's imported), known keys, right types; overrides and skips
    applied."""
    from lmforge.data.dedup.base import DedupStage
    from lmforge.data.stages import find_stage, import_root, stage_name

    entries: list[tuple[int, str, StageTarget, str, dict[str, Any]]] = []
    for i, item in enumerate(cfg.stages):
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise ConfigError(f"stages[{i}]: expected a stage name or {{name: {{parameters}}}}, got {item!r}")
        ((key, params),) = item.items()
        target = find_stage(key, f"stages[{i}]")
        if params is not None and not isinstance(params, dict):
            raise ConfigError(f"stages[{i}] ({key}): parameters must be a mapping, got {params!r}")
        entries.append((i, key, target, stage_name(target, key, f"stages[{i}]"), dict(params or {})))
    names = list(dict.fromkeys(e[3] for e in entries))
    for name in list(cfg.stage) + list(cfg.skip):
        if name not in names:
            raise ConfigError(
                f"stage override/skip names {name!r}, which is not in stages: {', '.join(names)}"
            )
    specs = []
    for i, key, target, name, params in entries:
        if name in cfg.skip:
            continue
        params.update(cfg.stage.get(name, {}))
        dedup = isinstance(target, type) and issubclass(target, DedupStage)
        spec = StageSpec(name, key, params, i, dedup, import_root(key))
        spec.params(target)  # options checked now, before any work
        specs.append(spec)
    return specs


def validate(cfg: PipelineConfig) -> list[StageSpec]:
    if not cfg.input:
        raise ConfigError("input is not set (input=FILE, FOLDER or GLOB)")
    if not cfg.output:
        raise ConfigError("output is not set (output=FOLDER)")
    if cfg.workers < 1:
        raise ConfigError(f"workers must be >= 1, got {cfg.workers}")
    specs = stage_specs(cfg)
    if not specs:
        raise ConfigError("the pipeline has no stages")
    return specs


def load_data_config(path: str | None, overrides: list[str]) -> PipelineConfig:
    return load_config(PipelineConfig, path, overrides)
