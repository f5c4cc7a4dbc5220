"""Decode throughput: lmforge vs transformers ``generate`` on the same random-weight GPT-2 124M.

Both run in this process on identical weights: 16-token prompts, 128 new tokens, greedy, eos off.
Tokens/s counts new tokens over the whole call (prefill included). Each setting is repeated and the
median and range are reported; the ratio is ours / theirs.

    python benchmarks/generate.py --device cpu --dtype float32 bfloat16 --batch 1 8
    python benchmarks/generate.py --device cuda --dtype bfloat16 --batch 1 8 64 --hf-cache dynamic static
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from _report import machine, write_json
from lmforge.hf.convert import import_state
from lmforge.hf.registry import by_model_type
from lmforge.infer.generate import generate_ids
from lmforge.infer.sampling import GenerationConfig
from lmforge.models.gpt import GPT
from lmforge.models.io import model_state_dict

PROMPT, NEW = 16, 128


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> list[float]:
    fn()  # warm-up (and compilation / graph capture)
    out = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def build(device: str, dtype: torch.dtype) -> tuple[GPT2LMHeadModel, GPT]:
    torch.manual_seed(0)
    hf_cfg = GPT2Config()  # 124M: 12 layers, 12 heads, 768 dims, 1024 positions, vocab 50257
    hf = GPT2LMHeadModel(hf_cfg).eval()
    adapter = by_model_type("gpt2")
    cfg = adapter.config_from_hf(hf_cfg.to_dict())
    ours = GPT(cfg)
    # every tensor checked strictly against the model: nothing random left
    state = import_state(adapter, hf.state_dict(), cfg, model_state_dict(ours), "GPT2LMHeadModel")
    ours.load_state_dict(state, strict=False)  # the tied head is the embedding, not a tensor of its own
    return hf.to(device, dtype), ours.to(device, dtype).eval()


def bench_ours(model: GPT, prompts: torch.Tensor, mode: str, device: str, repeats: int) -> list[float]:
    cfg = GenerationConfig(max_new_tokens=NEW, temperature=0, stop_at_eos=False)
    return timed(lambda: generate_ids(model, prompts.tolist(), cfg, mode=mode), device, repeats)


def bench_hf(hf: GPT2LMHeadModel, prompts: torch.Tensor, cache: str, device: str, repeats: int) -> list:
    ids = prompts.to(device)
    kw = {"cache_implementation": "static"} if cache == "static" else {}

    def run() -> None:
        with torch.inference_mode():
            hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=NEW,
                min_new_tokens=NEW,
                do_sample=False,
                pad_token_id=0,
                **kw,
            )

    return timed(run, device, repeats)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--modes", nargs="+", default=["auto"], help="auto, eager, static, compiled, graph")
    ap.add_argument("--hf-cache", nargs="+", default=["dynamic"], choices=["dynamic", "static"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(Path(__file__).with_name("generate.json")))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for dtype_name in args.dtype:
        hf, ours = build(args.device, getattr(torch, dtype_name))
        for batch in args.batch:
            prompts = torch.randint(0, 50257, (batch, PROMPT), generator=torch.Generator().manual_seed(batch))
            row: dict = {"dtype": dtype_name, "batch": batch}
            theirs = {}
            for cache in args.hf_cache:
                t = bench_hf(hf, prompts, cache, args.device, args.repeats)
                theirs[cache] = batch * NEW / statistics.median(t)
                row[f"hf_{cache}"] = {"seconds": t, "tok_s": theirs[cache]}
            for mode in args.modes:
                t = bench_ours(ours, prompts, mode, args.device, args.repeats)
                tps = batch * NEW / statistics.median(t)
                row[f"lmforge_{mode}"] = {"seconds": t, "tok_s": tps}
                ratios = {c: tps / v for c, v in theirs.items()}
                row[f"lmforge_{mode}"]["ratio"] = ratios
                spread = f"{batch * NEW / max(t):.0f}-{batch * NEW / min(t):.0f}"
                print(
                    f"{dtype_name:9s} batch {batch:3d} lmforge[{mode}] {tps:9.1f} tok/s ({spread})  "
                    + "  ".join(f"HF {c} {theirs[c]:9.1f} tok/s -> {r:5.2f}x" for c, r in ratios.items()),
                    flush=True,
                )
            results.append(row)
    meta = {**machine(args.device), "prompt_tokens": PROMPT, "new_tokens": NEW, "repeats": args.repeats}
    write_json(args.out, {"meta": meta, "results": results})


if __name__ == "__main__":
    main()
