"""Checksums of saved state, verified on load: a file damaged inside its tensor data (a bad disk, a torn
copy) is caught when read, not hours later as a NaN. One digest serves checkpoints and model folders."""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from lmforge.errors import LmforgeError


class IntegrityError(LmforgeError):
    """A saved file's contents do not match the checksum stored with them."""


def digest(obj: Any) -> str:
    """SHA-256 of a nested structure of dicts, lists, tensors and scalars, independent of dict order
    and of where the tensors live (device) — the same value before saving and after loading."""
    h = hashlib.sha256()
    _update(h, obj)
    return h.hexdigest()


def _update(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=str):
            h.update(f"K{key!r}".encode())
            _update(h, obj[key])
    elif isinstance(obj, list | tuple):
        h.update(f"L{len(obj)}".encode())
        for item in obj:
            _update(h, item)
    else:
        h.update(f"V{obj!r}".encode())
