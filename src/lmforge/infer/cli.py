"""``lmforge generate``: continue prompts with a trained model."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text from an lmforge model folder")
    p.add_argument("model_dir")
    p.add_argument("--prompt", action="append", required=True, help="repeat for a batch of prompts")
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.add_argument("--truncate", action="store_true", help="cut over-long prompts from the left")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from lmforge.errors import LmforgeError
    from lmforge.infer.generate import complete, stream_batch
    from lmforge.infer.sampling import GenerationConfig
    from lmforge.models.io import load_model

    cfg = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        stop=args.stop,
        seed=args.seed,
        truncate="left" if args.truncate else "error",
    )
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    dtype = {
        "auto": torch.bfloat16 if device.startswith("cuda") else None,
        "float32": torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
    }[args.dtype]
    if args.seed is not None:
        torch.manual_seed(args.seed)
    model, tokenizer = load_model(args.model_dir, device=device, dtype=dtype)
    if tokenizer is None:
        raise LmforgeError(f"{args.model_dir}: the model folder has no tokenizer.json")
    if args.stream:
        current = None
        for row, delta in stream_batch(model, tokenizer, args.prompt, cfg):
            if row != current:
                sys.stdout.write(
                    f"\n--- [{row}] {args.prompt[row]}" if len(args.prompt) > 1 else args.prompt[row]
                )
                current = row
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    for i, c in enumerate(complete(model, tokenizer, args.prompt, cfg)):
        if len(args.prompt) > 1:
            print(f"--- [{i}] ({c.finish_reason}, {len(c.token_ids)} tokens)")
        print(args.prompt[i] + c.text)
    return 0
