"""Typed configs: dataclasses loaded from YAML, with ``key=value`` overrides.

Every stage describes its settings as a dataclass. ``load_config`` builds one from a YAML file plus
command-line overrides and checks every key and type *before* any work starts, so a typo fails with a
message naming the key and the valid ones instead of being silently ignored.

``add_config_arguments`` gives a stage's command line the same dataclass as its only source of options:
``--config``, ``key=value``, short flags that set config keys, and a ``--help`` that lists every key with
its type, default and help (the field's ``metadata["help"]``, else the comment after it in the source).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import json
import math
import re
import sys
import tokenize
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from lmforge.errors import LmforgeError

T = TypeVar("T")


class ConfigError(LmforgeError, ValueError):
    """A config file or override does not fit the dataclass it is meant for."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _family(options: tuple, value: Any, where: str) -> type | None:
    """For a union of configs told apart by an ``arch`` field (model families), the one ``value`` names
    (the first when it names none), so errors speak of that family's keys, not of every option's."""
    families = {
        f.default: tp
        for tp in options
        if dataclasses.is_dataclass(tp)
        for f in dataclasses.fields(tp)
        if f.name == "arch"
    }
    if not families or isinstance(value, tuple(families.values())) or not isinstance(value, dict):
        return None
    arch = value.get("arch", next(iter(families)))
    if arch not in families:
        raise ConfigError(f"{where}.arch: expected one of {list(families)}, got {arch!r}")
    return families[arch]


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert where it is lossless."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if (family := _family(args, value, where)) is not None:
            return _coerce(value, family, where)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string; Python spells it a float
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                if math.isfinite(number):
                    return number
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]} for {cls.__name__}; "
            f"valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}" if where else name)
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{cls.__name__}{' at ' + where if where else ''}: {e}") from None
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-serialisable dict of a config dataclass."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(cfg)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[1, 2]"]`` into a nested dict; values are parsed as YAML scalars/lists."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        _set_path(tree, key, yaml.safe_load(raw) if raw.strip() else "", f"override {item!r}")
    return tree


def _set_path(tree: dict[str, Any], key: str, value: Any, where: str) -> None:
    """``tree["a"]["b"] = value`` for ``key`` ``a.b``, creating sections on the way."""
    node = tree
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {p} is not a section")
    node[parts[-1]] = value


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def config_dir() -> Path:
    """Folder of the YAML presets: shipped inside the wheel, or ``configs/`` of a source checkout."""
    packaged = Path(__file__).parent / "configs"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "configs"


def resolve_config_path(path: str | Path) -> Path:
    """A path as given, else a preset name such as ``models/gpt2-124m`` under ``config_dir()``."""
    p = Path(path)
    if p.is_file():
        return p
    for candidate in (config_dir() / p, config_dir() / p.with_suffix(".yaml")):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config file {str(path)!r} not found (also looked for a preset under {config_dir()})")


def presets(*folders: str) -> list[tuple[str, str]]:
    """The bundled presets under ``folders`` (e.g. ``data``; ``""``: the top level only; none: all) as
    (the name --config takes, the start of its first comment line)."""
    root = config_dir()
    paths = sorted(root.rglob("*.yaml")) if not folders else []
    for folder in folders:
        paths += sorted((root / folder).glob("*.yaml"))
    found = []
    for path in paths:
        first = path.read_text(encoding="utf-8").splitlines()[:1]
        about = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
        about = about if len(about) <= 72 else about[:69].rstrip() + "..."
        found.append((path.relative_to(root).with_suffix("").as_posix(), about))
    return found


def presets_help(*folders: str) -> str:
    """A ``--help`` paragraph listing the presets a stage's --config takes by name."""
    rows = presets(*folders)
    width = max((len(name) for name, _ in rows), default=0)
    return "presets (--config NAME):\n" + "\n".join(f"  {n.ljust(width)}  {about}" for n, about in rows)


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = resolve_config_path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    values: dict[str, Any] | None = None,
) -> T:
    """Load ``cls`` from a YAML file (or preset name) and apply ``key=value`` overrides, then ``values``
    (settings already parsed, by dotted key: what command-line flags set)."""
    data = read_yaml(path) if path is not None else {}
    data = _merge(data, parse_overrides(overrides or []))
    flags: dict[str, Any] = {}
    for key, value in (values or {}).items():
        _set_path(flags, key, value, f"flag for {key}")
    data = _merge(data, flags)
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        source = _source(str(e), path, overrides, values)
        raise ConfigError(f"{source}: {e}" if source else str(e)) from None


def _source(message: str, path: str | Path | None, overrides: list[str] | None, values: dict | None) -> str:
    """Where the bad setting came from: the command line when it names a key set there, else the file."""
    keys = [o.split("=", 1)[0].strip() for o in overrides or []] + list(values or {})
    named = re.match(r"(?:unknown config key )?([\w.\[\]]+)", message)
    key = named[1] if named else ""
    if any(key == k or key.startswith(f"{k}.") or key.startswith(f"{k}[") for k in keys):
        return "command line"
    return str(path) if path is not None else ""


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")


# The command line of a stage: its config dataclass is the one source of options, defaults and help.

_FLAGS = "config_flags"  # where the flags' values wait in the argparse namespace
_SETTINGS = "config_settings"  # key=value words that a many-valued flag took in, given back


@dataclasses.dataclass(frozen=True)
class Flag:
    """A short option that sets one config key: ``Flag("max_new_tokens")`` is ``--max-new-tokens``.

    A bool key is a switch; a ``const`` makes any key a switch that sets that value (``--truncate`` ->
    ``truncate=left``). A list key collects every use (``--prompt a --prompt b``); ``many`` also takes
    several values at once (``--input corpus/*.txt``, as the shell expands a glob); among them, a
    ``key=value`` word for a key of the config is a setting, not a value. ``name`` gives the option a
    shorter name than its key's (``Flag("num_beams", name="beams")`` is ``--beams``).
    """

    key: str
    const: Any = None
    many: bool = False
    name: str | None = None

    @property
    def option(self) -> str:
        return "--" + (self.name or self.key).replace(".", "-").replace("_", "-")


@dataclasses.dataclass(frozen=True)
class ConfigKey:
    """One settable key of a config dataclass; nested sections give dotted names (``optim.lr``)."""

    name: str
    type: Any
    default: Any  # dataclasses.MISSING when the field has none
    help: str


@functools.cache
def _module_source(name: str) -> tuple[dict[str, ast.ClassDef], dict[int, str]] | None:
    """A module's classes (by name) and its comments (by line), parsed once: ``inspect.getsource`` of
    a class parses its whole module each time (half a second over the CLI's configs)."""
    try:
        source = inspect.getsource(sys.modules[name])
    except (KeyError, OSError, TypeError):
        return None
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    comments = {t.start[0]: t.string.lstrip("#").strip() for t in tokens if t.type == tokenize.COMMENT}
    classes = {node.name: node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ClassDef)}
    return classes, comments


def _field_comments(klass: type) -> dict[str, str]:
    """``{name: text}`` for ``name: type = default  # text`` in the class body; {} without source."""
    found = _module_source(klass.__module__)
    if found is None or klass.__name__ not in found[0]:
        return {}
    classes, comments = found
    return {
        stmt.target.id: comments[stmt.end_lineno]
        for stmt in classes[klass.__name__].body
        if isinstance(stmt, ast.AnnAssign)
        and isinstance(stmt.target, ast.Name)
        and stmt.end_lineno in comments
    }


@functools.cache
def field_help(cls: type) -> dict[str, str]:
    """Each field's help: its ``metadata["help"]``, else its source comment (base classes too)."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            comments.update(_field_comments(klass))
    return {f.name: f.metadata.get("help", comments.get(f.name, "")) for f in dataclasses.fields(cls)}


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def config_keys(cls: type, prefix: str = "") -> list[ConfigKey]:
    """Every key of ``cls`` in declaration order, nested dataclasses flattened to dotted keys."""
    hints = typing.get_type_hints(cls)
    docs = field_help(cls)
    keys: list[ConfigKey] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        families = [t for t in typing.get_args(hints[f.name]) if dataclasses.is_dataclass(t)]
        if dataclasses.is_dataclass(hints[f.name]):
            keys += config_keys(hints[f.name], f"{prefix}{f.name}.")
        elif families:  # model families: the first's keys, then each other's own ones, marked
            keys += config_keys(families[0], f"{prefix}{f.name}.")
            seen = {k.name for k in keys}
            for family in families[1:]:
                arch = next(x.default for x in dataclasses.fields(family) if x.name == "arch")
                own = [k for k in config_keys(family, f"{prefix}{f.name}.") if k.name not in seen]
                keys += [dataclasses.replace(k, help=f"(arch={arch}) {k.help}".strip()) for k in own]
        else:
            keys.append(ConfigKey(prefix + f.name, hints[f.name], _default(f), docs[f.name]))
    return keys


def type_label(tp: Any) -> str:
    """How ``--help`` shows a type: ``int | None``, ``list[str]``, ``bpe|char`` for a Literal."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(type_label(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_label(a) for a in args)}]"
    return "None" if tp is type(None) else _type_name(tp)


def describe_config(cls: type) -> str:
    """The key table that ``--help`` ends with: name, type, default (JSON, which YAML reads) and help."""
    rows = [
        (
            k.name,
            type_label(k.type),
            "required" if k.default is dataclasses.MISSING else json.dumps(k.default, default=str),
            k.help,
        )
        for k in config_keys(cls)
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        f"config keys of {cls.__name__} (set in a --config YAML file, as key=value, or by a flag above;",
        "a flag wins over key=value, key=value over the file):",
    ]
    lines += [
        ("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[3]).rstrip() for row in rows
    ]
    return "\n".join(lines)


def _takes_text(tp: Any) -> bool:
    """Whether a command-line string already is a value of ``tp`` (so it is not read as YAML)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return all(isinstance(a, str) for a in args)
    if origin in (Union, types.UnionType):
        return str in args
    return tp is str


def _list_item(tp: Any) -> Any:
    """The item type of a list or tuple type; None for any other type."""
    if typing.get_origin(tp) not in (list, tuple):
        return None
    return (typing.get_args(tp) or (Any,))[0]


def _cli_value(raw: str, tp: Any) -> Any:
    """A flag's string as a value for ``tp``: as is where ``tp`` takes text, else read as YAML (``0.8``,
    ``null``); ``from_dict`` checks the type later, with the rest of the config."""
    if _takes_text(tp) or not raw.strip():
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


class _FlagAction(argparse.Action):
    """Records a flag's value under its config key for ``config_from_args``; a list key collects uses."""

    def __init__(
        self, option_strings: list[str], dest: str, key: ConfigKey, names: frozenset[str], **kwargs: Any
    ) -> None:
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, **kwargs)
        self.key = key
        self.names = names  # the config's top-level keys

    def _give_back_settings(self, namespace: argparse.Namespace, values: list[str]) -> list[str]:
        """argparse hands a many-valued flag every word up to the next option: a ``key=value`` for a key
        of this config among them is a setting (``--input a.txt out=tok/``), not a value."""
        settings = [v for v in values if "=" in v and v.split("=", 1)[0].split(".")[0] in self.names]
        setattr(namespace, _SETTINGS, [*getattr(namespace, _SETTINGS, []), *settings])
        return [v for v in values if v not in settings]

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if self.nargs == "+":
            values = self._give_back_settings(namespace, values)
            if not values:
                return
        given = dict(getattr(namespace, self.dest, {}))
        item = _list_item(self.key.type)
        if self.nargs == 0:
            given[self.key.name] = self.const
        elif item is not None:
            new = [_cli_value(v, item) for v in (values if isinstance(values, list) else [values])]
            given[self.key.name] = [*given.get(self.key.name, []), *new]
        else:
            given[self.key.name] = _cli_value(values, self.key.type)
        setattr(namespace, self.dest, given)


def _add_flag(parser: argparse.ArgumentParser, flag: Flag, key: ConfigKey, names: frozenset[str]) -> None:
    if flag.const is not None or key.type is bool:
        const = True if flag.const is None else flag.const
        shown = json.dumps(const) if not isinstance(const, str) else const
        kwargs: dict[str, Any] = {"nargs": 0, "const": const, "help": f"sets {key.name}={shown}"}
    else:
        item = _list_item(key.type)
        value_type = key.type if item is None else item
        choices = typing.get_args(value_type) if typing.get_origin(value_type) is typing.Literal else ()
        metavar = "{" + ",".join(map(str, choices)) + "}" if choices else key.name.rsplit(".", 1)[-1].upper()
        repeat = "" if item is None else " (repeatable)"
        kwargs = {"nargs": "+" if flag.many else None, "metavar": metavar, "help": f"sets {key.name}{repeat}"}
    parser.add_argument(flag.option, action=_FlagAction, dest=_FLAGS, key=key, names=names, **kwargs)


def add_config_arguments(
    parser: argparse.ArgumentParser, cls: type, flags: Sequence[str | Flag] = (), preset_folder: str = ""
) -> None:
    """Give a stage's parser ``--config``, ``key=value`` overrides and ``flags``, all from ``cls``, and a
    ``--help`` that lists every key of ``cls`` (and the presets under ``configs/preset_folder``)."""
    keys = {k.name: k for k in config_keys(cls)}
    names = frozenset(k.split(".")[0] for k in keys)
    parser.add_argument(
        "--config", metavar="FILE_OR_PRESET", help="a YAML file (or preset under configs/) of the keys below"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="set config keys (listed below)")
    for flag in flags:
        flag = Flag(flag) if isinstance(flag, str) else flag
        _add_flag(parser, flag, keys[flag.key], names)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = describe_config(cls) + (f"\n\n{presets_help(preset_folder)}" if preset_folder else "")


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """The stage's config from its parsed command line: the --config file, then key=value, then flags."""
    overrides = [*args.overrides, *getattr(args, _SETTINGS, [])]
    return load_config(cls, args.config, overrides, getattr(args, _FLAGS, {}))


def require(cfg: Any, *names: str) -> None:
    """Fail with a ConfigError naming the first of ``names`` that ``cfg`` leaves empty (a required key)."""
    for name in names:
        if getattr(cfg, name) in (None, "", [], ()):
            raise ConfigError(f"config key {name} is required for {type(cfg).__name__} (set {name}=...)")
