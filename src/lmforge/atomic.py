"""Write-then-rename: a crash at any moment (SIGKILL included) leaves the old file or folder, or the new
complete one, never a half-written one under the final name. Every stage writes its outputs this way."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_file(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a hidden temporary sibling path to write; on success it replaces ``path``.

    ``fsync`` flushes the bytes to disk before the rename (for files that must survive a power cut,
    such as training checkpoints). A leftover ``.NAME.tmp*`` is what a killed writer leaves behind.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    try:
        yield tmp
        if fsync:
            with tmp.open("rb+") as f:
                os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)


@contextmanager
def atomic_directory(out_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to write into; on success it is renamed to ``out_dir``.

    A crash mid-write leaves the previous ``out_dir`` (if any) intact and no half-written folder.
    """
    final = Path(out_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
