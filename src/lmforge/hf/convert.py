"""Convert between Hugging Face ``transformers`` checkpoints and lmforge model folders.

Each family is an adapter in ``hf/registry.py``, chosen by config.json's ``model_type`` (``gpt2``:
``GPT2LMHeadModel``, ``llama``: ``LlamaForCausalLM``); this module reads and writes the folders for all of
them. Only the state dict and config are translated, so ``transformers`` is not needed to convert; it is
needed only to load the result on the other side.
"""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from lmforge.atomic import atomic_directory
from lmforge.errors import LmforgeError
from lmforge.hf.adapter import Adapter, StateDict
from lmforge.hf.registry import by_model_type, for_config
from lmforge.models.io import (
    check_state_dict,
    load_model,
    model_state_dict,
    read_safetensors,
    save_model,
    skeleton,
)
from lmforge.models.registry import build
from lmforge.tokenizer.core import Tokenizer

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)
SPECIAL_TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")


# --------------------------------------------------------------------------------------------------
# Reading a transformers folder


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LmforgeError(f"{path}: not valid JSON ({e})") from None


def read_hf_config(hf_dir: Path) -> tuple[Adapter, Any]:
    """The family's adapter and the lmforge config; errors name config.json and the field at fault."""
    path = hf_dir / "config.json"
    if not path.is_file():
        raise LmforgeError(f"{hf_dir}: no config.json; expected a transformers checkpoint folder")
    cfg = _read_json(path)
    try:
        adapter = by_model_type(cfg.get("model_type"))
        return adapter, adapter.config_from_hf(cfg)
    except KeyError as e:
        raise LmforgeError(f"{path}: missing field {e.args[0]!r}") from None
    except LmforgeError as e:
        raise LmforgeError(f"{path}: {e}") from None


def read_hf_state_dict(hf_dir: Path) -> StateDict:
    """model.safetensors, a sharded safetensors index, or pytorch_model.bin."""
    if (hf_dir / "model.safetensors").is_file():
        return read_safetensors(hf_dir / "model.safetensors")
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise LmforgeError(f'{index}: no "weight_map" object')
        state: StateDict = {}
        for shard in sorted(set(weight_map.values())):
            state.update(read_safetensors(hf_dir / shard))
        return state
    path = hf_dir / "pytorch_model.bin"
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, pickle.UnpicklingError, EOFError) as e:
            raise LmforgeError(f"{path}: cannot read ({e})") from None
    raise LmforgeError(f"{hf_dir}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def import_state(
    adapter: Adapter, hf_state: StateDict, config: Any, expected: StateDict, source: str
) -> StateDict:
    """The lmforge state of an HF one, checked strictly in HF names (what the user's file holds).

    ``expected`` is the model's own state (meta tensors will do): mapped to HF it says which tensors,
    of which shapes, the checkpoint must hold; anything else that is not ignorable is reported too.
    """
    hf_state = adapter.normalize_hf_names(hf_state)
    hf_state = {k: v for k, v in hf_state.items() if not adapter.ignored(k, config)}
    check_state_dict(adapter.state_to_hf(expected, config), hf_state, source)
    state = adapter.state_from_hf(hf_state, config)
    check_state_dict(expected, state, f"the {adapter.model_type} adapter's output")  # its rules cover all
    return state


def _load_keeping_ties(model: nn.Module, state: StateDict) -> None:
    """Load without copying. ``assign=True`` unties shared parameters (a head tied to the embedding):
    point each alias back at the parameter loaded from ``state``."""
    aliases: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)
    tied = [names for names in aliases.values() if len(names) > 1]
    model.load_state_dict(state, strict=False, assign=True)
    for names in tied:
        owner = model.get_parameter(next(n for n in names if n in state))
        for name in names:
            module, _, attr = name.rpartition(".")
            setattr(model.get_submodule(module), attr, owner)


def from_hf(hf_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """A local transformers checkpoint folder -> an lmforge model folder (tokenizer carried along)."""
    src = Path(hf_dir)
    adapter, config = read_hf_config(src)
    has_tok = (src / "tokenizer.json").is_file() or (src / "vocab.json").is_file()
    tokenizer = Tokenizer.load(src) if has_tok else None
    if tokenizer is None:
        warn_no_tokenizer(src, out_dir)
    extra = {"converted_from": adapter.model_type}
    state = read_hf_state_dict(src)
    return convert_state(
        adapter, config, state, tokenizer, out_dir, overwrite, extra, f"{src}: the checkpoint"
    )


def convert_state(
    adapter: Adapter,
    config: Any,
    hf_state: StateDict,
    tokenizer: Tokenizer | None,
    out_dir: str | Path,
    overwrite: bool,
    extra: dict,
    source: str,
) -> Path:
    """Tensors in transformers' names (from a checkpoint folder or another format) -> a model folder."""
    with skeleton():
        model = build(config)
    state = import_state(adapter, hf_state, config, model_state_dict(model), source)
    _load_keeping_ties(model, state)
    return save_model(model, tokenizer, out_dir, extra, overwrite)


def warn_no_tokenizer(src: Path, out_dir: str | Path) -> None:
    """Weights without a tokenizer convert, but cannot generate from text: say so now, not at generate."""
    print(
        f"warning: {src} has no tokenizer (tokenizer.json, or vocab.json + merges.txt): {out_dir} holds the "
        "weights only; `lmforge generate` needs a tokenizer: copy its files into the folder",
        file=sys.stderr,
    )


# --------------------------------------------------------------------------------------------------
# Writing a transformers folder


def hf_config(adapter: Adapter, config: Any, tokenizer: Tokenizer | None, dtype: torch.dtype) -> dict:
    """config.json: the adapter's family fields plus what every transformers config carries."""
    special = {}
    if tokenizer is not None:
        ids = (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
        special = dict(zip(SPECIAL_TOKEN_FIELDS, ids))
    return {
        "architectures": [adapter.architecture_for(config)],
        "model_type": adapter.model_type,
        **adapter.config_to_hf(config),
        "dtype": str(dtype).split(".")[-1],
        **special,
    }


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def to_hf(model_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """An lmforge model folder -> a folder ``transformers`` loads with ``from_pretrained``."""
    src = Path(model_dir)
    model, tokenizer = load_model(src)
    if tokenizer is None:
        warn_no_tokenizer(src, out_dir)
    try:
        adapter = for_config(model.config)
    except LmforgeError as e:
        raise LmforgeError(f"{src}: {e}") from None
    state = adapter.state_to_hf(model_state_dict(model), model.config)
    hf_cfg = hf_config(adapter, model.config, tokenizer, next(model.parameters()).dtype)
    with atomic_directory(out_dir, overwrite) as tmp:
        _write_json(tmp / "config.json", hf_cfg)
        save_file(
            {k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"), {"format": "pt"}
        )
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        fields = (*SPECIAL_TOKEN_FIELDS, "decoder_start_token_id")
        generation = {k: hf_cfg[k] for k in fields if hf_cfg.get(k) is not None}
        _write_json(tmp / "generation_config.json", generation)
    return Path(out_dir)
