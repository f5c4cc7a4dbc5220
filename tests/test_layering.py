"""The layering rules of docs/architecture.md hold: every import in src/lmforge (lazy ones inside
functions included) goes from a package to one it may use. The table in the doc is the rule; this test
reads it, so the map a contributor reads and the check CI runs cannot drift apart."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "lmforge"
DOC = ROOT / "docs" / "architecture.md"
CORE = {"config", "errors", "atomic", "device", "checkpoint", "integrity"}
ENTRY = {"cli", "__init__", "__main__"}  # the entry points may import anything


def rules(doc: Path = DOC) -> dict[str, set[str]]:
    """{package: packages it may import besides core and itself}, from the doc's layering table."""
    table = doc.read_text(encoding="utf-8").split("<!-- layering -->")[1]
    allowed = {}
    for row in re.findall(r"^\| `(\w+)/` \| (.*?) \|", table, flags=re.M):
        allowed[row[0]] = set(re.findall(r"`(\w+)`", row[1]))
    return allowed


def layer(module: str) -> str:
    """lmforge.train.trainer -> train; lmforge.config -> core; lmforge.cli -> entry."""
    part = module.split(".")[1] if "." in module else "__init__"
    return "core" if part in CORE else "entry" if part in ENTRY else part


def imports(path: Path, src: Path) -> list[tuple[int, str]]:
    """(line, module) for every ``lmforge`` import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(("lmforge", *path.relative_to(src).parent.parts))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("lmforge")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    [*package.split(".")[: len(package.split(".")) - node.level + 1], base]
                ).strip(".")
            if base.startswith("lmforge"):
                # `from lmforge import x` and `from lmforge.models import registry` name modules too
                found += [
                    (node.lineno, f"{base}.{a.name}" if base.count(".") < 1 else base) for a in node.names
                ]
    return found


def violations(src: Path, allowed: dict[str, set[str]]) -> list[str]:
    problems = []
    for path in sorted(src.rglob("*.py")):
        module = ".".join(("lmforge", *path.relative_to(src).with_suffix("").parts))
        here = layer(module)
        if here == "entry":
            continue
        if here not in allowed and here != "core":
            problems.append(f"{path.relative_to(src.parent)}: package {here!r} is not in the layering table")
            continue
        ok = {here, "core"} | allowed.get(here, set())
        for line, target in imports(path, src):
            there = layer(target)
            if there not in ok:
                problems.append(f"{path.relative_to(src.parent)}:{line}: {here} may not import {target}")
    return problems


def test_every_import_follows_the_layering_table():
    allowed = rules()
    assert {"data", "tokenizer", "models", "train", "evaluate", "infer", "hf"} <= set(allowed)
    assert "train" not in allowed["evaluate"] | allowed["infer"] | allowed["models"]
    assert violations(SRC, allowed) == []


def test_a_forbidden_import_is_caught(tmp_path):
    """Copy the package, add one forbidden edge (evaluation importing the trainer), see it reported."""
    pkg = tmp_path / "lmforge"
    for path in SRC.rglob("*.py"):
        (pkg / path.relative_to(SRC)).parent.mkdir(parents=True, exist_ok=True)
        (pkg / path.relative_to(SRC)).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    bad = pkg / "evaluate" / "perplexity.py"
    bad.write_text(bad.read_text() + "\n\ndef f():\n    from lmforge.train.trainer import Trainer\n")
    (pkg / "models" / "extra.py").write_text("from lmforge import data\n")
    found = violations(pkg, rules())
    assert len(found) == 2
    assert any("evaluate may not import lmforge.train.trainer" in f for f in found)
    assert any("models/extra.py:1: models may not import lmforge.data" in f for f in found)
