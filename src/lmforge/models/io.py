"""The lmforge model folder: ``config.json`` + ``model.safetensors`` + the tokenizer files.

Loading is strict: a missing, unexpected or mis-shaped tensor is an error that lists them all, never a
silent partial load.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.atomic import atomic_directory
from lmforge.config import to_dict
from lmforge.errors import LmforgeError
from lmforge.integrity import IntegrityError, digest
from lmforge.models import registry
from lmforge.tokenizer.core import Tokenizer

FORMAT = "lmforge"


def check_state_dict(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], source: str) -> None:
    """Raise naming every missing, unexpected and mis-shaped tensor of ``got`` against ``expected``."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(got[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(got))
        if tuple(got[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {'; '.join(shapes)}")
    if problems:
        raise LmforgeError(f"{source} does not fit the model: " + " | ".join(problems))


def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each tensor once: a tied weight (e.g. ``lm_head.weight`` sharing
    ``tok_emb.weight``) is stored under its first name only."""
    seen: set[int] = set()
    sd = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) not in seen:
            seen.add(id(t))
            sd[name] = t.detach().contiguous()
    return sd


def tied_parameters(model: nn.Module) -> dict[str, str]:
    """{name: first name} for every parameter that is the same tensor as an earlier one."""
    first: dict[int, str] = {}
    tied = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            tied[name] = first[id(p)]
        else:
            first[id(p)] = name
    return tied


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; when lmforge wrote it, checked against its stored checksum."""
    state, verify = _read_checking(path)
    verify()
    return state


def _read_checking(path: Path) -> tuple[dict[str, torch.Tensor], Callable[[], None]]:
    """The tensors, and what raises ``IntegrityError`` unless they match the stored checksum: it is
    computed on another thread meanwhile (hashlib releases the GIL), so loading them into a model
    overlaps it (half a second of a 135M model's load)."""
    try:
        state = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            stored = (f.metadata() or {}).get("sha256")
    except (SafetensorError, OSError, ValueError) as e:
        raise LmforgeError(f"{path}: cannot read safetensors ({e})") from None
    found: list = []  # the digest, or what stopped it

    def check() -> None:
        try:
            found.append(digest(state))
        except BaseException as e:  # raised again by verify, in the caller's thread
            found.append(e)

    worker = threading.Thread(target=check, daemon=True)
    if stored is not None:
        worker.start()

    def verify() -> None:
        if stored is not None:
            worker.join()
            if isinstance(found[0], BaseException):
                raise found[0]
            if found != [stored]:
                raise IntegrityError(f"{path}: checksum mismatch, the file is damaged")

    return state, verify


def save_model(
    model: nn.Module,
    tokenizer: Tokenizer | None,
    out_dir: str | Path,
    extra: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a model folder atomically; ``extra`` lands in config.json (e.g. training provenance)."""
    with atomic_directory(out_dir, overwrite) as tmp:
        config = model.config
        meta = {"format": FORMAT, "architecture": config.arch, "model": to_dict(config), **(extra or {})}
        (tmp / "config.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        state = model_state_dict(model)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt", "sha256": digest(state)})
        if tokenizer is not None:
            tokenizer.save(tmp)
    return Path(out_dir)


def read_model_config(model_dir: str | Path) -> Any:
    d = Path(model_dir)
    path = d / "config.json"
    if not path.is_file():
        raise LmforgeError(f"{d}: not an lmforge model folder (no config.json)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LmforgeError(f"{path}: not valid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        hint = (
            " (a Hugging Face checkpoint? convert it with `lmforge convert --from-hf`)"
            if "model_type" in meta
            else ""
        )
        raise LmforgeError(f"{path}: not an lmforge model config{hint}")
    arch = meta.get("architecture")
    if arch not in registry.names():
        raise LmforgeError(f"{path}: unknown architecture {arch!r}; expected one of {registry.names()}")
    return registry.config_from_dict({**meta["model"], "arch": arch})


_REAL_NORMAL = nn.init.normal_
_SKELETON = threading.local()  # .depth: how many skeleton() blocks this thread is inside
_SKELETON_LOCK = threading.Lock()
_skeletons = 0  # skeleton() blocks open in any thread: while > 0, nn.init.normal_ is _normal_unless_skeleton


def _normal_unless_skeleton(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    if getattr(_SKELETON, "depth", 0):
        return tensor
    return _REAL_NORMAL(tensor, *args, **kwargs)


@contextmanager
def skeleton() -> Iterator[None]:
    """Modules built inside have meta tensors (no memory) and no initial draw: the file's tensors
    replace them, and the first random draw on a meta tensor imports PyTorch's compiler (0.8 s a
    process, measured) for nothing. The models draw through ``nn.init.normal_``, which skips the draw
    for this thread only; other threads draw as usual meanwhile."""
    global _skeletons
    with _SKELETON_LOCK:
        _skeletons += 1
        nn.init.normal_ = _normal_unless_skeleton
    _SKELETON.depth = getattr(_SKELETON, "depth", 0) + 1
    try:
        with torch.device("meta"):
            yield
    finally:
        _SKELETON.depth -= 1
        with _SKELETON_LOCK:
            _skeletons -= 1
            if not _skeletons:
                nn.init.normal_ = _REAL_NORMAL


def load_model(
    model_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[nn.Module, Tokenizer | None]:
    """Load (model, tokenizer) from an lmforge model folder; the model is in eval mode."""
    d = Path(model_dir)
    config = read_model_config(d)
    with skeleton():
        model = registry.build(config)
    quantization = json.loads((d / "config.json").read_text(encoding="utf-8")).get("quantization")
    if quantization:  # int8/int4 layers in place of the float ones, for the folder's tensors
        from lmforge.models.quant import QuantSpec, quantize_model

        quantize_model(model, QuantSpec(**quantization))
    state, verify = _read_checking(d / "model.safetensors")
    check_state_dict(model_state_dict(model), state, str(d / "model.safetensors"))
    tied = tied_parameters(model)
    model = model.to_empty(device=device)  # materialises each parameter separately: re-tie after
    for name, first in tied.items():
        owner, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner), attr, model.get_parameter(first))
    model.load_state_dict(state, strict=False, assign=False)
    for module in model.modules():  # non-persistent buffers (e.g. RoPE tables) are not in the file
        if hasattr(module, "reset_tables"):
            module.reset_tables(device)
    if dtype is not None:
        model = model.to(dtype)
    has_tok = (d / "tokenizer.json").is_file() or (d / "vocab.json").is_file()
    tokenizer = Tokenizer.load(d) if has_tok else None
    verify()
    return model.eval(), tokenizer
