"""Beam-5 translation throughput: lmforge vs transformers ``generate(num_beams=5)`` on the same model.

A random-weight Marian (MarianMTModel) is converted to lmforge (``import_state``, every tensor checked),
and both decode the same source batches in this process, fp32 on the CPU: beam 5, length penalty 1,
max 64 new tokens. Random weights rarely end a sentence, so both run the full 64 steps; the outputs are
compared token for token (they must be equal: same search, same model). Sentences/s and output
tokens/s are medians of ``--repeats`` timed calls (ranges recorded); the ratio is ours / theirs.

    python benchmarks/beam.py --shape small base --batch 1 32
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from transformers import MarianConfig, MarianMTModel

from _report import machine, summary, write_json
from lmforge.hf.convert import import_state
from lmforge.hf.registry import by_model_type
from lmforge.infer.sampling import GenerationConfig
from lmforge.infer.seq2seq import generate_ids
from lmforge.models.io import model_state_dict
from lmforge.models.seq2seq import Seq2Seq

BEAMS, NEW = 5, 64
# small: lmforge's transformer-small trained on Multi30k (8k vocabulary); base: an opus-mt model's shape.
SHAPES = {
    "small": dict(vocab_size=8000, d_model=256, layers=3, heads=4, ffn=1024),
    "base": dict(vocab_size=32000, d_model=512, layers=6, heads=8, ffn=2048),
}
EOS, PAD = 2, 0


def build(shape: str) -> tuple[MarianMTModel, Seq2Seq]:
    s = SHAPES[shape]
    torch.manual_seed(0)
    cfg = MarianConfig(
        vocab_size=s["vocab_size"],
        d_model=s["d_model"],
        encoder_layers=s["layers"],
        decoder_layers=s["layers"],
        encoder_attention_heads=s["heads"],
        decoder_attention_heads=s["heads"],
        encoder_ffn_dim=s["ffn"],
        decoder_ffn_dim=s["ffn"],
        max_position_embeddings=256,
        scale_embedding=True,
        activation_function="swish",
        pad_token_id=PAD,
        eos_token_id=EOS,
        decoder_start_token_id=PAD,
        forced_eos_token_id=None,
    )
    hf = MarianMTModel(cfg).eval()
    adapter = by_model_type("marian")
    ours_cfg = adapter.config_from_hf(cfg.to_dict())
    ours = Seq2Seq(ours_cfg)
    state = import_state(adapter, hf.state_dict(), ours_cfg, model_state_dict(ours), "MarianMTModel")
    ours.load_state_dict(state, strict=False)
    return hf, ours.eval()


def sources(n: int, vocab: int) -> list[list[int]]:
    """Source sentences of 12-30 tokens (Multi30k's range in an 8k BPE), eos-terminated."""
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(12, 31, (n,), generator=g).tolist()
    return [[*torch.randint(3, vocab, (k - 1,), generator=g).tolist(), EOS] for k in lengths]


def hf_generate(hf: MarianMTModel, batch: list[list[int]]) -> list[list[int]]:
    width = max(map(len, batch))
    ids = torch.tensor([s + [PAD] * (width - len(s)) for s in batch])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch])
    with torch.no_grad():
        out = hf.generate(
            input_ids=ids, attention_mask=mask, num_beams=BEAMS, max_new_tokens=NEW, do_sample=False,
            length_penalty=1.0, early_stopping=False, eos_token_id=EOS, pad_token_id=PAD,
            decoder_start_token_id=PAD, forced_eos_token_id=None,
        )  # fmt: skip
    return [[t for t in row[1:].tolist() if t not in (EOS, PAD)] for row in out]


def ours_generate(model: Seq2Seq, batch: list[list[int]]) -> list[list[int]]:
    cfg = GenerationConfig(max_new_tokens=NEW, num_beams=BEAMS, temperature=0.0)
    return generate_ids(model, batch, cfg, EOS)


def timed(fn, repeats: int) -> tuple[list[float], list[list[int]]]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", nargs="+", default=["small", "base"], choices=SHAPES)
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 32])
    ap.add_argument(
        "--sentences", type=int, default=32, help="sentences per timed call (batch 1: one at a time)"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("beam.json"))
    args = ap.parse_args()
    results = []
    for shape in args.shape:
        hf, ours = build(shape)
        src = sources(args.sentences, SHAPES[shape]["vocab_size"])
        for batch in args.batch:
            chunks = [src[i : i + batch] for i in range(0, len(src), batch)]
            row = {"shape": shape, **SHAPES[shape], "batch": batch, "sentences": len(src)}
            outputs = {}
            for name, fn in (("transformers", hf_generate), ("lmforge", ours_generate)):
                model = hf if name == "transformers" else ours
                times, out = timed(
                    lambda fn=fn, model=model, chunks=chunks: [o for c in chunks for o in fn(model, c)],
                    args.repeats,
                )
                tokens = sum(map(len, out))
                outputs[name] = out
                row[name] = {
                    "seconds": summary(times),
                    "sentences_per_s": round(len(src) / statistics.median(times), 2),
                    "tokens_per_s": round(tokens / statistics.median(times), 1),
                }
            row["same_outputs"] = outputs["lmforge"] == outputs["transformers"]
            row["speedup"] = round(
                row["transformers"]["seconds"]["median"] / row["lmforge"]["seconds"]["median"], 2
            )
            results.append(row)
            print(
                f"{shape:5s} batch {batch:3d}: lmforge {row['lmforge']['sentences_per_s']:7.2f} sent/s, "
                f"transformers {row['transformers']['sentences_per_s']:7.2f} sent/s "
                f"-> {row['speedup']:.2f}x, "
                f"same outputs: {row['same_outputs']}",
                flush=True,
            )
    write_json(
        args.out,
        {
            "settings": {"beams": BEAMS, "max_new_tokens": NEW, "dtype": "float32"},
            "results": results,
            "machine": machine("cpu"),
        },
    )


if __name__ == "__main__":
    main()
