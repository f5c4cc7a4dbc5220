"""Kernels written in C (``models/kernels/*.c``), compiled for this CPU at first use and cached.

A kernel is built with the system's C compiler (``$CC``, else ``cc``) at ``-O3 -march=native`` with
OpenMP, into ``$LMFORGE_CACHE`` (default ``$XDG_CACHE_HOME/lmforge``, else ``~/.cache/lmforge``) under a
name that hashes the source, the compiler and the CPU, written to a temporary file and renamed (two
processes may build it at once). It shares PyTorch's OpenMP runtime (same soname, loaded once), so its
threads are PyTorch's. Nothing is required: without a compiler, on another OS or CPU, when the build
fails (a kernel refuses to compile without the instructions it needs) or with ``LMFORGE_NATIVE=0``,
``library`` returns None and callers keep PyTorch's path; ``lmforge.models.native`` logs why once.
Every exported function's C signature is declared once, in ``SIGNATURES``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger("lmforge.native")

SOURCES = Path(__file__).with_name("kernels")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
_L, _P, _I, _F = ctypes.c_long, ctypes.c_void_p, ctypes.c_int, ctypes.c_float
# every function the kernels export: (argument types, result type), set on each library as it loads
SIGNATURES = {
    "lmforge_int8_linear": ([_P, _I, _L, _L, _L, _P, _P, _P, _P, _P, _L, _I], _I),
    "lmforge_int8_decode": ([_L, _L, _L, _L, _L, _L, _L, _F, _P, _P, _P, _P, _P, _P, _P, _L, _L, _I], _I),
    "lmforge_seq2seq_decode": (
        [_L, _L, _L, _L, _L, _F, _I, _I, _P, _P, _L, _P, _P, _L, _L, _L, _L, _P, _I],
        _I,
    ),
    "lmforge_logz_topk": ([_P, _L, _L, _L, _P, _P, _P, _I], _I),
    "lmforge_copy_rows": ([_P, _P, _L, _L, _L, _L, _L, _L, _P, _P, _L, _I], None),
    "lmforge_rms_norm": ([_P, _L, _L, _P, _F, _P, _I], None),
    "lmforge_silu_mul": ([_P, _L, _L, _P, _I], None),
    "lmforge_rotary": ([_P, _L, _L, _L, _L, _L, _L, _L, _P, _P, _P, _I], None),
    "lmforge_amx_init": ([], _I),
    "lmforge_amx_pack": ([_P, _L, _L, _I, _P, _I], _I),
    "lmforge_amx_linear": ([_P, _L, _L, _P, _L, _I, _P, _P, _P, _I], None),
}


def round16(n: int) -> int:
    """n rounded up to a multiple of 16: the kernels work on blocks of 16 outputs (one AVX-512 vector)."""
    return -(-n // 16) * 16


def pad16(v: Tensor) -> Tensor:
    """A vector as fp32, padded by zeros to ``round16`` of its length (scales, biases of a block layout)."""
    return F.pad(v.detach().float(), (0, round16(v.numel()) - v.numel()))


def cache_dir() -> Path:
    if os.environ.get("LMFORGE_CACHE"):
        return Path(os.environ["LMFORGE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lmforge"


def _cpu() -> bytes:
    """What -march=native compiles for: the CPU's model and flags."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor().encode()
    lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines))).encode()


def _compiler() -> tuple[list[str], bytes] | None:
    """The compiler command (``$CC`` may carry arguments, e.g. ``ccache gcc``) and its version text."""
    cc = shlex.split(os.environ.get("CC") or "cc")
    if not cc or shutil.which(cc[0]) is None:
        return None
    try:
        version = subprocess.run([*cc, "--version"], capture_output=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return cc, version


def _build(name: str) -> Path:
    """The compiled library of ``kernels/<name>.c`` (built now unless cached); raises on failure."""
    where = f"{platform.system()}/{platform.machine()}"
    if where not in ("Linux/x86_64", "Linux/AMD64"):
        raise OSError(f"native kernels are built on x86-64 Linux only, not {where}")
    found = _compiler()
    if found is None:
        raise OSError("no C compiler (set CC or install cc)")
    cc, version = found
    source = SOURCES / f"{name}.c"
    headers = b"".join(h.read_bytes() for h in sorted(SOURCES.glob("*.h")))  # what the sources include
    inputs = source.read_bytes() + headers + version + _cpu() + " ".join(FLAGS).encode()
    digest = hashlib.sha256(inputs).hexdigest()
    target = cache_dir() / f"{name}-{digest[:16]}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}-", suffix=".so")
    os.close(fd)
    try:
        command = [*cc, *FLAGS, str(source), "-o", tmp]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["(no message)"])[0]
            raise OSError(f"{' '.join(cc)} could not build {source.name}: {first}")
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would keep a shared cache's other users out
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.cache
def library(name: str) -> ctypes.CDLL | None:
    """The kernel library ``kernels/<name>.c`` for this CPU, or None (PyTorch's path is used then)."""
    if os.environ.get("LMFORGE_NATIVE", "1") == "0":
        return None
    try:
        lib = ctypes.CDLL(str(_build(name)))
    except (OSError, subprocess.SubprocessError) as e:
        log.info("native kernel %s unavailable, using PyTorch's: %s", name, e)
        return None
    for function, (arguments, result) in SIGNATURES.items():
        if hasattr(lib, function):
            getattr(lib, function).argtypes, getattr(lib, function).restype = arguments, result
    return lib
