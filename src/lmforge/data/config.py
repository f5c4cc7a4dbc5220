"""The ``lmforge data`` config: input/output, executor, reader, and the ordered list of stages.

``stages`` is a list of ``{name: {parameters}}`` (or a bare name for the defaults), so a preset can be copied
and stages dropped, reordered or re-parameterised. From the command line, ``stage.<name>.<key>=value``
overrides a parameter of every stage with that name and ``skip=[a, b]`` leaves stages out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from lmforge.config import ConfigError, from_dict, load_config
from lmforge.data.readers import ReaderConfig
from lmforge.data.writers import OutputFormat


@dataclass
class RayConfig:
    address: str | None = None  # None starts a local Ray; "auto" joins a running cluster
    num_cpus: int | None = None  # CPUs of a local Ray (default: workers)


@dataclass
class DataConfig:
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


# Settings that change how a run is executed, not what it produces: a resumed run may change them.
RUN_ONLY_KEYS = ("workers", "executor", "ray", "progress", "keep_intermediate")


@dataclass
class StageSpec:
    name: str
    params: Any  # the stage's settings dataclass


def stage_specs(cfg: DataConfig) -> list[StageSpec]:
    """Validated stage list: known names, known keys, right types; overrides and skips applied."""
    from lmforge.data.stages import DEDUP_STAGES, DOC_STAGES

    known = {**DOC_STAGES, **DEDUP_STAGES}
    entries: list[tuple[str, dict[str, Any]]] = []
    for i, item in enumerate(cfg.stages):
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise ConfigError(f"stages[{i}]: expected a stage name or {{name: {{parameters}}}}, got {item!r}")
        ((name, params),) = item.items()
        if name not in known:
            raise ConfigError(f"stages[{i}]: unknown stage {name!r}; known stages: {', '.join(known)}")
        if params is not None and not isinstance(params, dict):
            raise ConfigError(f"stages[{i}] ({name}): parameters must be a mapping, got {params!r}")
        entries.append((name, dict(params or {})))
    names = {n for n, _ in entries}
    for name in list(cfg.stage) + list(cfg.skip):
        if name not in names:
            raise ConfigError(
                f"stage override/skip names {name!r}, which is not in stages: {', '.join(names)}"
            )
    specs = []
    for i, (name, params) in enumerate(entries):
        if name in cfg.skip:
            continue
        params.update(cfg.stage.get(name, {}))
        specs.append(StageSpec(name, from_dict(known[name][0], params, f"stages[{i}].{name}")))
    return specs


def validate(cfg: DataConfig) -> list[StageSpec]:
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


def load_data_config(path: str | None, overrides: list[str]) -> DataConfig:
    return load_config(DataConfig, path, overrides)
