"""``lmforge generate``: continue prompts with a trained decoder, or translate/summarize them with an
encoder-decoder; ``lmforge chat``: talk to a decoder through its chat template; ``lmforge quantize``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from lmforge.config import Flag, add_config_arguments, config_from_args
from lmforge.infer.config import ChatConfig, GenerateConfig, QuantizeConfig

if TYPE_CHECKING:
    from torch import nn

    from lmforge.tokenizer.core import Tokenizer

SAMPLING = ["max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "stop", "seed"]
FLAGS = [
    "prompt",
    *SAMPLING,
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
CHAT_FLAGS = ["message", "system", "chat_template", *SAMPLING, "device", "dtype"]
COMMANDS = "/reset forgets the conversation, /system TEXT sets the system message, /exit (or Ctrl-D) ends"


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
        q,
        QuantizeConfig,
        ["bits", "group", Flag("symmetric", const=False, name="asymmetric"), "calibration", "overwrite"],
    )
    q.set_defaults(func=run_quantize)
    c = sub.add_parser(
        "chat",
        help="chat with a decoder in the terminal (its chat template; --message for one-shot use)",
        description=f"An interactive chat: answers stream as they are generated; {COMMANDS}.",
    )
    c.add_argument("model_dir", help="an lmforge model folder (a decoder, ideally instruction-tuned)")
    add_config_arguments(c, ChatConfig, CHAT_FLAGS)
    c.set_defaults(func=run_chat)


def _load(model_dir: str, device: str, dtype: str) -> tuple[nn.Module, Tokenizer]:
    """A model folder's model and tokenizer on ``device`` in ``dtype``."""
    from lmforge.device import pick_device, pick_dtype
    from lmforge.errors import LmforgeError
    from lmforge.models.io import load_model

    where = pick_device(device)
    model, tokenizer = load_model(model_dir, device=where, dtype=pick_dtype(dtype, where))
    if tokenizer is None:
        raise LmforgeError(f"{model_dir}: the model folder has no tokenizer.json")
    return model, tokenizer


def _answer(session, text: str) -> None:
    """Stream the answer to ``text``; Ctrl-C stops it (what came so far stays in the history)."""
    try:
        for delta in session.send(text):
            sys.stdout.write(delta)
            sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stdout.write(" [stopped]")
    sys.stdout.write("\n")
    sys.stdout.flush()


def run_chat(args: argparse.Namespace) -> int:
    import contextlib
    from pathlib import Path

    import torch

    from lmforge.errors import LmforgeError
    from lmforge.infer.chat import ChatSession

    cfg = config_from_args(ChatConfig, args)
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed)
    model, tokenizer = _load(args.model_dir, cfg.device, cfg.dtype)
    if model.config.arch != "gpt":
        raise LmforgeError(f"{args.model_dir}: chat needs a decoder (gpt), not {model.config.arch}")
    template = Path(cfg.chat_template).read_text(encoding="utf-8") if cfg.chat_template else None
    session = ChatSession(model, tokenizer, cfg, cfg.system, template)
    if cfg.message:
        for text in cfg.message:
            _answer(session, text)
        return 0
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    name, context = Path(args.model_dir).resolve().name, model.config.max_seq_len
    print(f"chatting with {name} ({context} tokens of context)")
    print(COMMANDS)
    while True:
        try:
            line = input("> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        command, _, rest = line.partition(" ")
        if command in ("/exit", "/quit"):
            return 0
        if command == "/reset":
            session.reset()
            print("(conversation reset)")
        elif command == "/system":
            session.system = rest.strip()
            print(f"(system message {'set' if session.system else 'removed'})")
        elif command.startswith("/"):
            print(f"unknown command {command}: {COMMANDS}")
        elif line:
            try:
                _answer(session, line)
            except LmforgeError as e:
                print(f"error: {e}")


def run_quantize(args: argparse.Namespace) -> int:
    from lmforge.infer.quantize import quantize_folder

    report = quantize_folder(args.model_dir, args.out_dir, config_from_args(QuantizeConfig, args))
    mib = lambda n: f"{n / 2**20:.1f} MiB"  # noqa: E731
    print(
        f"wrote {args.out_dir}: {report['layers']} layers as {report['quantization']}, "
        f"model.safetensors {mib(report['bytes_before'])} -> {mib(report['bytes_after'])}"
        + (
            f", GPTQ on {report['calibration_tokens']} calibration tokens"
            if report["calibration_tokens"]
            else ""
        )
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

    from lmforge.infer.generate import complete

    cfg = config_from_args(GenerateConfig, args)
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed)
    model, tokenizer = _load(args.model_dir, cfg.device, cfg.dtype)
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
