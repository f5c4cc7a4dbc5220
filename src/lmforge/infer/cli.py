"""``lmforge generate``: continue prompts with a trained decoder, or translate/summarize them with an
encoder-decoder."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from lmforge.config import Flag, add_config_arguments, config_from_args
from lmforge.infer.config import GenerateConfig, QuantizeConfig

if TYPE_CHECKING:
    from torch import nn

    from lmforge.tokenizer.core import Tokenizer

FLAGS = [
    "prompt",
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "stop",
    "seed",
    "stream",
    Flag("truncate", const="left"),
    Flag("num_beams", name="beams"),
    "length_penalty",
    "early_stopping",
    "no_repeat_ngram_size",
    "min_new_tokens",
    "device",
    "dtype",
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text from an lmforge model folder")
    p.add_argument("model_dir", help="an lmforge model folder")
    add_config_arguments(p, GenerateConfig, FLAGS, preset_folder="generate")
    p.set_defaults(func=run)
    q = sub.add_parser(
        "quantize", help="int8 or int4 weights for a model folder (generate, serve, eval load it)"
    )
    q.add_argument("model_dir", help="an lmforge model folder (float weights)")
    q.add_argument("out_dir", help="where to write the quantized model folder")
    add_config_arguments(
        q, QuantizeConfig, ["bits", "group", Flag("symmetric", const=False, name="asymmetric"), "overwrite"]
    )
    q.set_defaults(func=run_quantize)


def run_quantize(args: argparse.Namespace) -> int:
    from lmforge.infer.quantize import quantize_folder

    report = quantize_folder(args.model_dir, args.out_dir, config_from_args(QuantizeConfig, args))
    mib = lambda n: f"{n / 2**20:.1f} MiB"  # noqa: E731
    print(
        f"wrote {args.out_dir}: {report['layers']} layers as {report['quantization']}, "
        f"model.safetensors {mib(report['bytes_before'])} -> {mib(report['bytes_after'])}"
    )
    return 0


def _print_stream(model: nn.Module, tokenizer: Tokenizer, cfg: GenerateConfig) -> None:
    """Tokens as they come. With several prompts each row is printed whole under its own header, one after
    another: the first row streams live, the others' text is held until the rows before them are out."""
    from lmforge.infer.generate import stream_batch

    rows = len(cfg.prompt)
    held: list[list[str]] = [[] for _ in range(rows)]

    def header(row: int) -> str:
        return f"--- [{row}] {cfg.prompt[row]}" if rows > 1 else cfg.prompt[row]

    sys.stdout.write(header(0))
    for row, delta in stream_batch(model, tokenizer, cfg.prompt, cfg):
        if row == 0:
            sys.stdout.write(delta)
            sys.stdout.flush()
        else:
            held[row].append(delta)
    for row in range(1, rows):
        sys.stdout.write("\n" + header(row) + "".join(held[row]))
    sys.stdout.write("\n")


def _print_targets(model: nn.Module, tokenizer: Tokenizer, cfg: GenerateConfig) -> None:
    """An encoder-decoder's output for each prompt (its source): the translation or summary alone."""
    from lmforge.errors import LmforgeError
    from lmforge.infer.seq2seq import translate

    if cfg.stream:
        raise LmforgeError("--stream: an encoder-decoder's output is printed whole (drop --stream)")
    for i, text in enumerate(translate(model, tokenizer, cfg.prompt, cfg)):
        if len(cfg.prompt) > 1:
            print(f"--- [{i}] {cfg.prompt[i]}")
        print(text)


def run(args: argparse.Namespace) -> int:
    import torch

    from lmforge.device import pick_device, pick_dtype
    from lmforge.errors import LmforgeError
    from lmforge.infer.generate import complete
    from lmforge.models.io import load_model

    cfg = config_from_args(GenerateConfig, args)
    device = pick_device(cfg.device)
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed)
    model, tokenizer = load_model(args.model_dir, device=device, dtype=pick_dtype(cfg.dtype, device))
    if tokenizer is None:
        raise LmforgeError(f"{args.model_dir}: the model folder has no tokenizer.json")
    if model.config.arch == "seq2seq":
        _print_targets(model, tokenizer, cfg)
        return 0
    if cfg.stream:
        _print_stream(model, tokenizer, cfg)
        return 0
    for i, c in enumerate(complete(model, tokenizer, cfg.prompt, cfg)):
        if len(cfg.prompt) > 1:
            print(f"--- [{i}] ({c.finish_reason}, {len(c.token_ids)} tokens)")
        print(cfg.prompt[i] + c.text)
    return 0
