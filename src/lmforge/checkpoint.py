"""Training checkpoints: one file per saved step, written atomically, the last K kept.

A core module: training writes checkpoints, evaluation and conversion read them (a killed run has no
exported model yet), so neither has to import the trainer.

A checkpoint is first written under a temporary name, flushed to disk, then renamed: a process killed at
any moment (SIGKILL included) leaves either the previous complete checkpoint or the new complete one,
never a torn file. Loading ignores leftover temporary files. Each checkpoint carries the SHA-256 of its
contents (``integrity.digest``), verified on load, so a file damaged later is refused, never trained on.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import torch

from lmforge.atomic import atomic_file
from lmforge.errors import LmforgeError
from lmforge.integrity import IntegrityError, digest

PATTERN = re.compile(r"^step_(\d{8})\.pt$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if PATTERN.match(p.name))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(run_dir: str | Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
    """Write ``state`` as checkpoint ``step`` atomically, then delete all but the newest ``keep_last``."""
    d = checkpoint_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"step_{step:08d}.pt"
    with atomic_file(final, fsync=True) as tmp:
        torch.save({**state, "sha256": digest(state)}, tmp)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    for stale in d.glob(".step_*.tmp*"):  # left by a killed run
        stale.unlink(missing_ok=True)
    return final


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The state saved at ``path``, its checksum verified (older files without one load as they are)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a foreign or damaged file: say which
        raise LmforgeError(f"{path}: cannot read checkpoint ({e})") from None
    stored = state.pop("sha256", None)
    if stored is not None and digest(state) != stored:
        raise IntegrityError(f"{path}: checksum mismatch, the file is damaged")
    return state


def load_latest_intact(run_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads and verifies, with its state; each damaged one skipped is
    reported on stderr with the reason. None when the run has no checkpoint."""
    found = list_checkpoints(run_dir)
    for path in reversed(found):
        try:
            return path, load_checkpoint(path)
        except LmforgeError as e:
            print(f"skipping checkpoint {path.name}: {e}", file=sys.stderr)
    if found:
        raise LmforgeError(f"{checkpoint_dir(run_dir)}: every checkpoint is damaged ({len(found)} tried)")
    return None
