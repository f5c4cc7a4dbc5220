"""``lmforge quantize``: a model folder with int8 or int4 weights that every command loads as it is."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from lmforge.errors import LmforgeError
from lmforge.infer.config import QuantizeConfig
from lmforge.models.gpt import GPT
from lmforge.models.io import load_model, save_model
from lmforge.models.quant import layer_group, quantize_model, target_layers
from lmforge.tokenizer.core import Tokenizer


def quantize_folder(model_dir: str | Path, out_dir: str | Path, cfg: QuantizeConfig) -> dict:
    """Quantize every linear layer but the head of the model in ``model_dir`` into ``out_dir`` (config,
    tokenizer and task settings carried over); returns what was done and the two files' sizes."""
    src = Path(model_dir)
    meta = json.loads((src / "config.json").read_text(encoding="utf-8")) if src.is_dir() else {}
    if meta.get("quantization"):
        raise LmforgeError(f"{src}: already quantized ({meta['quantization']}); quantize the float model")
    model, tokenizer = load_model(src)
    spec = cfg.spec()
    extra = {k: v for k, v in meta.items() if k not in ("format", "architecture", "model")}
    hessians = None
    if cfg.calibration is not None:
        windows = calibration_windows(model, tokenizer, cfg)
        hessians = layer_hessians(model, windows, spec.group)
        extra["calibration"] = {
            "method": "gptq",
            "file": Path(cfg.calibration).name,
            "tokens": windows.numel(),
        }
    layers = quantize_model(model, spec, hessians)
    if layers == 0:
        raise LmforgeError(f"{src}: no linear layer to quantize (group {cfg.group} divides none)")
    out = save_model(model, tokenizer, out_dir, {**extra, "quantization": spec.to_dict()}, cfg.overwrite)
    size = lambda d: (Path(d) / "model.safetensors").stat().st_size  # noqa: E731
    return {
        "quantization": spec.to_dict(),
        "layers": layers,
        "bytes_before": size(src),
        "bytes_after": size(out),
        "calibration_tokens": 0 if hessians is None else extra["calibration"]["tokens"],
    }


def calibration_windows(model: nn.Module, tokenizer: Tokenizer | None, cfg: QuantizeConfig) -> Tensor:
    """The calibration text's first tokens as rows of ``calibration_len`` (as many whole rows as
    ``calibration_tokens`` allows and the text holds)."""
    path = Path(cfg.calibration)
    if not isinstance(model, GPT):
        raise LmforgeError(
            f"calibration (GPTQ) needs a decoder-only model; this one is {type(model).__name__}"
        )
    if tokenizer is None:
        raise LmforgeError("calibration needs the model's tokenizer beside it")
    if not path.is_file():
        raise LmforgeError(f"{path}: no such calibration text file")
    length = min(cfg.calibration_len, model.config.max_seq_len)
    with path.open(encoding="utf-8") as f:  # enough characters for the tokens asked, not the whole file
        text = f.read(cfg.calibration_tokens * 16)
    ids = tokenizer.encode(text)[: cfg.calibration_tokens]
    rows = len(ids) // length
    if rows == 0:
        raise LmforgeError(f"{path}: {len(ids)} tokens, fewer than one calibration window of {length}")
    return torch.tensor(ids[: rows * length]).view(rows, length)


@torch.no_grad()
def layer_hessians(model: GPT, windows: Tensor, group: int, batch: int = 4) -> dict[nn.Module, Tensor]:
    """H = X^T X of the inputs X every layer that ``group`` quantizes (``layer_group``) sees while the
    model reads ``windows``."""
    hessians: dict[nn.Module, Tensor] = {}

    def record(layer: nn.Module, args: tuple) -> None:
        x = args[0].reshape(-1, args[0].size(-1)).float()
        if layer not in hessians:
            hessians[layer] = torch.zeros(x.size(1), x.size(1), device=x.device)
        hessians[layer].addmm_(x.T, x)

    layers = [layer for _, _, layer in target_layers(model) if layer_group(group, layer.in_features)]
    hooks = [layer.register_forward_pre_hook(record) for layer in layers]
    try:
        device = model.lm_head.weight.device
        for i in range(0, len(windows), batch):
            model(windows[i : i + batch].to(device), head=False)
    finally:
        for hook in hooks:
            hook.remove()
    return hessians
