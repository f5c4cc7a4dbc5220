"""Write-then-rename: a crash at any moment (SIGKILL included) never leaves a half-written file or folder
under the final name. Every stage writes its outputs this way.

A temporary is a hidden sibling ``.NAME.tmp-PID-HOST``: whoever comes next can tell a leftover of a killed
writer (this host, process gone) from the work of a live one, and removes only the former.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lmforge.errors import LmforgeError

_HOST = socket.gethostname()
MANIFEST = ".lmforge-files"  # the entries lmforge wrote in an output folder


def _tmp(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}-{_HOST}")


def _old(final: Path) -> Path:
    return final.with_name(f".{final.name}.old")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _sweep(folder: Path, name: str = ".+") -> None:
    """Delete temporaries in ``folder`` (of final names matching the regex ``name``) whose writer ran on this
    host and is gone. Other hosts' temporaries (a shared file system) are left alone: their pids mean nothing
    here."""
    pattern = re.compile(rf"\.(?:{name})\.tmp-(\d+)-{re.escape(_HOST)}")
    for entry in folder.iterdir():
        m = pattern.fullmatch(entry.name)
        if m and not _alive(int(m[1])):
            _remove(entry)


def remove_leftovers(root: str | Path) -> None:
    """Delete, anywhere under ``root``, what writers killed on this host left behind (e.g. before resuming a
    run in the same folder); a live writer's temporary is never touched."""
    for folder, _, _ in os.walk(root):
        _sweep(Path(folder))


@contextmanager
def atomic_file(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a hidden temporary sibling path to write; on success it replaces ``path``.

    ``fsync`` flushes the bytes to disk before the rename (for files that must survive a power cut,
    such as training checkpoints).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(final)
    try:
        yield tmp
        if fsync:
            with tmp.open("rb+") as f:
                os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _apply_umask(tmp)
    os.replace(tmp, final)


def _discard_old(final: Path) -> None:
    """Delete ``.NAME.old`` by first renaming it to a temporary, so a half-deleted folder never sits under
    the ``.old`` name (which ``recover_directory`` trusts to be complete)."""
    trash = _tmp(final)
    try:
        os.replace(_old(final), trash)
    except FileNotFoundError:
        return
    _remove(trash)


def recover_directory(path: str | Path) -> None:
    """Repair what a killed ``atomic_directory`` left beside ``path``: a complete ``.NAME.old`` goes back
    under ``path`` when ``path`` is missing (killed between the two renames of the swap) and is deleted when
    ``path`` is there (killed after them); temporaries of dead writers on this host are deleted.

    Runs before every ``atomic_directory`` write; a reader may call it too. Not for folders that two
    processes write at the same time.
    """
    final = Path(path)
    if not final.parent.is_dir():
        return
    if _old(final).exists():
        if final.exists():
            _discard_old(final)
        else:
            os.replace(_old(final), final)
    _sweep(final.parent, re.escape(final.name))


@contextmanager
def atomic_directory(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder to write into; on success it takes the place of ``out_dir``.

    On Linux the new folder and the previous one swap names in one atomic step, then the previous one is
    deleted: a crash at any moment leaves the old or the new folder under ``out_dir``. Elsewhere (no atomic
    exchange) the previous ``out_dir`` is renamed to ``.NAME.old``, the new one into place, then ``.old`` is
    deleted: a crash between the two renames leaves a complete ``.NAME.old``, which the next write (or
    ``recover_directory``, which readers may call) restores.

    lmforge never deletes what it did not write: each output lists its entries in ``.lmforge-files``, and
    a folder holding anything else is refused (``OutputNotEmpty``) unless ``overwrite``; then only the new
    files are put in place, one atomic rename each, and lmforge's earlier ones removed, the rest untouched
    (so too for the working directory, whose folder must not be swapped away under the shell).
    """
    final = Path(os.path.abspath(out_dir))  # "." and "x/.." have real names
    if final.exists() and not final.is_dir():
        raise OutputNotEmpty(f"{final} is a file, not a folder: choose a folder for the output")
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(final)
    foreign = foreign_entries(final)
    if foreign and not overwrite:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise OutputNotEmpty(
            f"{final} holds files lmforge did not write ({shown}): choose a new or empty folder, or "
            "pass --overwrite to put lmforge's files beside them (nothing else there is touched)"
        )
    tmp = _tmp(final)
    _remove(tmp)  # left by a killed process that had this pid
    tmp.mkdir()
    try:
        yield tmp
        (tmp / MANIFEST).write_text(json.dumps(sorted(p.name for p in tmp.iterdir())), encoding="utf-8")
        _apply_umask(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if foreign or final == Path.cwd():
        _merge_into(tmp, final)
    elif final.exists() and _exchange(tmp, final):  # one atomic step: ``tmp`` now holds the previous folder
        _remove(tmp)
    else:
        if final.exists():
            os.replace(final, _old(final))
        os.replace(tmp, final)
        _discard_old(final)


def _apply_umask(written: Path) -> None:
    """Give what a writer left private (safetensors writes 0600) the permissions the user's umask gives
    any new file: outputs are shared like other programs' outputs. A folder: all that is in it too."""
    mask = os.umask(0)
    os.umask(mask)
    for path in (written, *(written.rglob("*") if written.is_dir() else ())):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


class OutputNotEmpty(LmforgeError):
    """The output folder holds files lmforge did not write."""


def owned_entries(folder: Path) -> set[str]:
    """The entries of ``folder`` that lmforge wrote (its manifest), with the manifest itself."""
    try:
        return {*json.loads((folder / MANIFEST).read_text(encoding="utf-8")), MANIFEST}
    except (OSError, ValueError):
        return set()


def foreign_entries(folder: Path) -> list[str]:
    """What ``folder`` holds that lmforge did not write there ([] for a missing or empty folder)."""
    if not folder.is_dir():
        return []
    ours = owned_entries(folder)
    return sorted(p.name for p in folder.iterdir() if p.name not in ours)


def _merge_into(tmp: Path, final: Path) -> None:
    """Move the new entries into ``final`` one rename each, drop lmforge's earlier entries that the new
    output lacks, leave everything else; the manifest goes last."""
    final.mkdir(exist_ok=True)
    before = owned_entries(final)
    new = {p.name for p in tmp.iterdir()}
    for name in sorted(new - {MANIFEST}):
        if (final / name).is_dir() and name in before:
            _remove(final / name)  # a folder cannot be renamed over a non-empty one
        os.replace(tmp / name, final / name)
    for name in sorted(before - new):
        _remove(final / name)
    os.replace(tmp / MANIFEST, final / MANIFEST)
    _remove(tmp)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``): the final name never
    goes missing. False where the system or file system cannot (then the two-rename swap is used)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))
