"""``lmforge quantize``: a model folder with int8 or int4 weights that every command loads as it is."""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.infer.config import QuantizeConfig
from lmforge.models.io import load_model, save_model
from lmforge.models.quant import quantize_model


def quantize_folder(model_dir: str | Path, out_dir: str | Path, cfg: QuantizeConfig) -> dict:
    """Quantize every linear layer but the head of the model in ``model_dir`` into ``out_dir`` (config,
    tokenizer and task settings carried over); returns what was done and the two files' sizes."""
    src = Path(model_dir)
    meta = json.loads((src / "config.json").read_text(encoding="utf-8")) if src.is_dir() else {}
    if meta.get("quantization"):
        raise LmforgeError(f"{src}: already quantized ({meta['quantization']}); quantize the float model")
    model, tokenizer = load_model(src)
    spec = cfg.spec()
    layers = quantize_model(model, spec)
    if layers == 0:
        raise LmforgeError(f"{src}: no linear layer to quantize (group {cfg.group} divides none)")
    extra = {k: v for k, v in meta.items() if k not in ("format", "architecture", "model")}
    out = save_model(model, tokenizer, out_dir, {**extra, "quantization": spec.to_dict()}, cfg.overwrite)
    size = lambda d: (Path(d) / "model.safetensors").stat().st_size  # noqa: E731
    return {
        "quantization": spec.to_dict(),
        "layers": layers,
        "bytes_before": size(src),
        "bytes_after": size(out),
    }
