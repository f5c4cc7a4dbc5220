"""Write-then-rename under crashes: a writer killed (SIGKILL) at every step of a folder swap leaves the old or
the new folder under the final name, at the latest once the next access has run ``recover_directory``, and
the temporaries of killed writers are removed while live writers' and other hosts' are not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import lmforge.atomic as atomic
from lmforge.atomic import atomic_directory, atomic_file, recover_directory, remove_leftovers

# A writer that kills itself (SIGKILL: no cleanup of any kind) at one point of an atomic_directory write.
KILLED_WRITER = """
import os, shutil, signal, sys
import lmforge.atomic as atomic

final, point, exchange = sys.argv[1], sys.argv[2], sys.argv[3] == "exchange"
renames = 0
real_replace, real_rmtree, real_exchange = os.replace, shutil.rmtree, atomic._exchange

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def replace(src, dst):
    global renames
    renames += 1
    if point == f"rename{renames}":
        die()
    real_replace(src, dst)

def rmtree(path, *args, **kw):
    if point == "delete_old":
        os.unlink(os.path.join(path, "v"))  # half deleted
        die()
    real_rmtree(path, *args, **kw)

def swap(a, b):
    if not exchange:
        return False  # as on a system without an atomic exchange: the two-rename swap
    if point == "exchange":
        die()
    return real_exchange(a, b)

atomic.os.replace, atomic.shutil.rmtree, atomic._exchange = replace, rmtree, swap
with atomic.atomic_directory(final) as tmp:
    (tmp / "v").write_text("new")
    if point == "writing":
        die()
"""

# Where each kill leaves the folder, before and after the next access (recover_directory): with the
# atomic exchange (Linux) the final name is never missing; without it, only between the two renames.
POINTS = {
    ("writing", "exchange"): ("old", "old"),  # the new folder was not complete
    ("exchange", "exchange"): ("old", "old"),  # killed just before the exchange
    ("delete_old", "exchange"): ("new", "new"),  # killed half-way through deleting the swapped-out folder
    ("writing", "renames"): ("old", "old"),
    ("rename1", "renames"): ("old", "old"),  # killed just before old -> .old
    ("rename2", "renames"): (None, "old"),  # between the two renames: only .old exists; recovery restores it
    ("rename3", "renames"): ("new", "new"),  # swapped; .old not yet renamed away
    ("delete_old", "renames"): ("new", "new"),  # killed half-way through deleting the previous folder
}


def content(final: Path) -> str | None:
    return (final / "v").read_text() if final.is_dir() else None


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    return int(done.stdout)


@pytest.mark.parametrize(("point", "swap"), list(POINTS))
def test_killed_swap_leaves_old_or_new_folder(tmp_path, point, swap):
    final = tmp_path / "model"
    with atomic_directory(final) as tmp:
        (tmp / "v").write_text("old")
    if swap == "exchange" and not atomic._exchange(tmp_path / "model", tmp_path / "model"):
        pytest.skip("no atomic exchange on this system / file system")
    args = [sys.executable, "-c", KILLED_WRITER, str(final), point, swap]
    child = subprocess.run(args, capture_output=True)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    before, after = POINTS[point, swap]
    assert content(final) == before
    recover_directory(final)  # what the next write (or a reader) does first
    assert content(final) == after
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no .old, no temporary of the dead writer
    with atomic_directory(final) as tmp:
        (tmp / "v").write_text("newer")
    assert content(final) == "newer"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_swap_interrupted_by_an_exception_is_repaired_by_the_next_write(tmp_path, monkeypatch):
    """A swap that fails between its two renames (the process lives on) leaves ``.model.old``; the next write
    in the same process puts it back first and reuses its own temporary name."""
    final = tmp_path / "model"
    with atomic_directory(final) as tmp:
        (tmp / "v").write_text("old")
    real, calls = os.replace, []

    def fail_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk gone")
        real(src, dst)

    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # the two-rename swap
    monkeypatch.setattr(atomic.os, "replace", fail_second)
    with pytest.raises(OSError, match="disk gone"), atomic_directory(final) as tmp:
        (tmp / "v").write_text("new")
    monkeypatch.setattr(atomic.os, "replace", real)
    assert not final.exists() and (tmp_path / ".model.old" / "v").read_text() == "old"
    recover_directory(final)
    assert content(final) == "old"
    with atomic_directory(final) as tmp:
        (tmp / "v").write_text("new")
    assert content(final) == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_failed_write_keeps_the_previous_folder(tmp_path):
    final = tmp_path / "out"
    with atomic_directory(final) as tmp:
        (tmp / "v").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(final) as tmp:
        (tmp / "v").write_text("half")
        raise RuntimeError
    assert content(final) == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_only_dead_writers_temporaries_on_this_host_are_removed(tmp_path):
    host = atomic._HOST
    dead, live = dead_pid(), os.getpid()
    keep = [
        f".model.tmp-{live}-{host}",  # a live writer (this process)
        f".model.tmp-{dead}-other-{host}",  # another host: its pids mean nothing here
        ".model.tmp-notes",  # not lmforge's naming
        f"model.tmp-{dead}-{host}",  # not hidden: not a temporary
        "model",
    ]
    gone = [f".model.tmp-{dead}-{host}"]
    for name in keep + gone:
        (tmp_path / name).mkdir()
    recover_directory(tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


def test_atomic_file_replaces_on_success_only(tmp_path):
    path = tmp_path / "a" / "f.json"
    with atomic_file(path) as tmp:
        assert tmp.parent == path.parent and tmp.name.startswith(".f.json.tmp-")
        tmp.write_text("1")
    with pytest.raises(KeyboardInterrupt), atomic_file(path, fsync=True) as tmp:
        tmp.write_text("2")
        raise KeyboardInterrupt
    assert path.read_text() == "1"
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]


def test_remove_leftovers_walks_the_tree(tmp_path):
    host, dead = atomic._HOST, dead_pid()
    (tmp_path / "done" / "seg0").mkdir(parents=True)
    killed = tmp_path / "done" / "seg0" / f".00001.json.tmp-{dead}-{host}"
    killed.write_text("{")
    (tmp_path / f".big.tmp-{dead}-{host}").mkdir()
    live = tmp_path / f".00002.jsonl.tmp-{os.getpid()}-{host}"
    live.write_text("")
    remove_leftovers(tmp_path)
    left = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")}
    assert left == {"done", "done/seg0", live.name}


def test_a_folder_with_foreign_files_is_refused_unless_overwrite_which_touches_only_ours(tmp_path):
    from lmforge.atomic import OutputNotEmpty

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    refused = r"holds files lmforge did not write \(notes.txt\).*--overwrite"
    with pytest.raises(OutputNotEmpty, match=refused), atomic_directory(out) as tmp:
        (tmp / "a").write_text("1")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the refused write left no temporary
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / "a").write_text("1")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b").write_text("2")
    with atomic_directory(out, overwrite=True) as tmp:  # again: our earlier files are replaced
        (tmp / "c").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == [".lmforge-files", "c", "notes.txt"]
    assert (out / "notes.txt").read_text() == "the user's"


def test_our_own_output_is_replaced_whole_and_the_working_directory_works(tmp_path, monkeypatch):
    out = tmp_path / "model"
    with atomic_directory(out) as tmp:
        (tmp / "old_only").write_text("x")
    with atomic_directory(out) as tmp:  # lmforge's folder: no --overwrite needed
        (tmp / "v").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == [".lmforge-files", "v"]
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    with atomic_directory(".") as tmp:  # `--out .`: written in place, the shell's folder stays
        (tmp / "v").write_text("in cwd")
    assert (here / "v").read_text() == "in cwd" and sorted(p.name for p in tmp_path.iterdir()) == [
        "here",
        "model",
    ]


def test_outputs_get_the_users_umask_not_private_temp_permissions(tmp_path, bpe_tokenizer):
    """Folders and files that stages write are created as any other program's (0755/0644 under umask 022),
    not with the 0700/0600 of temporary files."""
    import torch
    from safetensors.torch import save_file

    from lmforge.checkpoint import save_checkpoint
    from lmforge.models.gpt import GPT, GPTConfig
    from lmforge.models.io import save_model
    from lmforge.tokenizer.shards import build_shards

    old = os.umask(0o022)
    try:
        model = save_model(
            GPT(GPTConfig(vocab_size=320, max_seq_len=8, n_layer=1, n_head=1, d_model=8)),
            bpe_tokenizer,
            tmp_path / "m",
        )
        shards = tmp_path / "s"
        build_shards(["some text " * 50] * 4, bpe_tokenizer, shards, val_fraction=0.2, progress=False)
        ckpt = save_checkpoint(tmp_path / "run", 1, {"x": 1}, keep_last=1)
        with atomic_file(tmp_path / "adapters.safetensors") as tmp:  # safetensors creates files 0600
            save_file({"x": torch.zeros(2)}, str(tmp))
    finally:
        os.umask(old)
    for folder in (model, shards):
        assert folder.stat().st_mode & 0o777 == 0o755, folder
        assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o644}, folder
    assert ckpt.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "adapters.safetensors").stat().st_mode & 0o777 == 0o644
