"""Serving throughput: ``lmforge serve`` with continuous batching vs the same server one request at a time.

A GPT-2 124M-shaped model (random weights) serves in this process (uvicorn in a thread, loopback); c
clients (1, 4, 16, 64) each stream ``--rounds`` completions of 128 tokens (16-token prompts given as
token ids, greedy, ``ignore_eos``). Reported per setting: aggregate output tokens/s (all tokens over the
wall time) and p50/p95 time to first token (request sent -> first text chunk). The baseline is the same
server with ``max_batch=1``: requests queue and run one after another. Clients share the CPU with the
server, as a co-located client would.

    python benchmarks/serve.py                       # the full run (minutes on a 2-core CPU)
    python benchmarks/serve.py --tiny                # a seconds-long smoke run on a tiny model
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from pathlib import Path

import httpx
import torch
import uvicorn
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from _report import machine, write_json
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.serve.app import create_app
from lmforge.serve.config import ServeConfig
from lmforge.tokenizer.core import Tokenizer

PROMPT = 16


def word_tokenizer(vocab: int) -> Tokenizer:
    """A tokenizer that decodes every id of the model (``w0`` .. ``wN``): the prompts are ids, so only
    decoding matters, and its cost is that of any word-level decode."""
    backend = HFTokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return Tokenizer(backend, {})


def start(app) -> tuple[uvicorn.Server, threading.Thread, str]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


async def one(http: httpx.AsyncClient, prompt: list[int], new: int) -> tuple[float, int]:
    """(time to first token, output tokens) of one streamed completion."""
    body = {"prompt": prompt, "max_tokens": new, "temperature": 0, "ignore_eos": True, "stream": True}
    body["stream_options"] = {"include_usage": True}
    t0, ttft, tokens = time.perf_counter(), None, 0
    async with http.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if ttft is None and event["choices"] and event["choices"][0]["text"]:
                ttft = time.perf_counter() - t0
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    return ttft if ttft is not None else time.perf_counter() - t0, tokens


async def load(base: str, clients: int, rounds: int, new: int, vocab: int) -> dict:
    gen = torch.Generator().manual_seed(clients)
    prompts = torch.randint(0, vocab, (clients * rounds, PROMPT), generator=gen).tolist()
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=base, timeout=3600, limits=limits) as http:

        async def client(i: int) -> list[tuple[float, int]]:
            return [await one(http, prompts[i * rounds + k], new) for k in range(rounds)]

        t0 = time.perf_counter()
        runs = [r for rs in await asyncio.gather(*(client(i) for i in range(clients))) for r in rs]
        wall = time.perf_counter() - t0
    ttfts = sorted(t for t, _ in runs)
    tokens = sum(n for _, n in runs)
    return {
        "requests": len(runs),
        "output_tokens": tokens,
        "seconds": round(wall, 2),
        "tok_s": round(tokens / wall, 1),
        "ttft_p50_s": round(statistics.median(ttfts), 3),
        "ttft_p95_s": round(ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))], 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", nargs="+", type=int, default=[1, 4, 16, 64])
    ap.add_argument("--rounds", type=int, default=1, help="requests each client sends, one after another")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--max-batch", type=int, default=64, help="the continuous-batching server's slots")
    ap.add_argument("--tiny", action="store_true", help="a tiny model and short outputs: a smoke run")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(Path(__file__).with_name("serve.json")))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = dict(n_layer=2, n_head=2, d_model=64, vocab_size=512) if args.tiny else {}
    cfg = GPTConfig(**shape)  # default: GPT-2 124M (12 layers, 768 dims, vocab 50257, 1024 positions)
    model, tokenizer = GPT(cfg).eval(), word_tokenizer(cfg.vocab_size)
    results: dict = {}
    for label, max_batch in (("sequential", 1), ("continuous", args.max_batch)):
        queue = max(args.clients) * 2
        settings = ServeConfig(max_batch=max_batch, max_queue=queue, max_len=PROMPT + args.new_tokens)
        server, thread, base = start(create_app((model, tokenizer), settings))
        try:
            asyncio.run(load(base, 1, 1, 4, cfg.vocab_size))  # warm-up
            for clients in args.clients:
                row = asyncio.run(load(base, clients, args.rounds, args.new_tokens, cfg.vocab_size))
                results.setdefault(label, {})[clients] = row
                print(
                    f"{label:10s} {clients:3d} clients: {row['tok_s']:8.1f} tok/s  "
                    f"TTFT p50 {row['ttft_p50_s']:.3f} s  p95 {row['ttft_p95_s']:.3f} s",
                    flush=True,
                )
        finally:
            server.should_exit = True
            thread.join()
    for clients in args.clients:
        ratio = results["continuous"][clients]["tok_s"] / results["sequential"][clients]["tok_s"]
        results["continuous"][clients]["speedup"] = round(ratio, 2)
        print(f"{clients:3d} clients: continuous batching {ratio:.2f}x the sequential throughput")
    meta = {
        **machine("cpu"),
        "model": "tiny" if args.tiny else "gpt2-124m (random weights)",
        "prompt_tokens": PROMPT,
        "new_tokens": args.new_tokens,
        "rounds": args.rounds,
        "max_batch": args.max_batch,
    }
    write_json(args.out, {"meta": meta, "results": results})


if __name__ == "__main__":
    main()
