"""Knowledge distillation on the demo corpus: a student about a quarter of its teacher's size, trained
for the same steps with and without the teacher.

The teacher is ``lmforge demo``'s model (4 layers, 256 wide, on the CPython reference manual) trained
for ``--teacher-minutes``. Two students (2 layers, 160 wide) train ``--steps`` steps on the demo's
shards with the demo's recipe: one on the labels alone (objective causal_lm), one with
``objective=distill`` (alpha, temperature below). Reported: each model's parameters, val perplexity on
the demo's val split (``evaluate.perplexity``, every val window), the size of model.safetensors and
greedy decode tokens/s at batch 1 (median of 5; measured after the training, on a quiet machine).

    python benchmarks/distill.py [--teacher-minutes 8] [--steps 600]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _report import machine, write_json

OUT = Path(__file__).with_name("distill.json")
STUDENT = ["model.n_layer=2", "model.d_model=160", "model.n_head=4"]


def lmforge(*args: str) -> None:
    print("$ lmforge " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "lmforge.cli", *args], check=True)


def measure(model_dir: Path, shards: Path) -> dict[str, Any]:
    from lmforge.evaluate.perplexity import perplexity
    from lmforge.infer.generate import generate_ids
    from lmforge.infer.sampling import GenerationConfig
    from lmforge.models.io import load_model

    model, tokenizer = load_model(model_dir)
    ppl = perplexity(model, shards, "val", seq_len=128, tokenizer=tokenizer)
    cfg = GenerationConfig(max_new_tokens=64, temperature=0, stop_at_eos=False)
    prompt = [tokenizer.encode("The for statement")]
    generate_ids(model, prompt, cfg)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        generate_ids(model, prompt, cfg)
        times.append(time.perf_counter() - start)
    params = sum(p.numel() for p in model.parameters())
    return {
        "parameters": params,
        "val_perplexity": round(ppl["perplexity"], 3),
        "val_tokens": ppl["tokens"],
        "model_mib": round((model_dir / "model.safetensors").stat().st_size / 2**20, 2),
        "decode_tok_s": round(64 / statistics.median(times), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher-minutes", type=float, default=8.0)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/lmforge-distill"))
    args = ap.parse_args()
    teacher = args.work / "teacher"
    if not (teacher / "run" / "model" / "config.json").is_file():
        lmforge("demo", "--minutes", str(args.teacher_minutes), "--out", str(teacher))
    shards = teacher / "shards"
    students = {
        "student": [],
        "distilled": [
            "objective=distill",
            f"distill.teacher={teacher / 'run' / 'model'}",
            f"distill.alpha={args.alpha}",
            f"distill.temperature={args.temperature}",
        ],
    }
    for name, extra in students.items():
        if not (args.work / name / "model" / "config.json").is_file():
            settings = [f"data.shards={shards}", f"out_dir={args.work / name}", f"max_steps={args.steps}"]
            lmforge("pretrain", "--config", "train/demo", *settings, *STUDENT, *extra)
    rows = {"teacher": measure(teacher / "run" / "model", shards)}
    for name in students:
        rows[name] = measure(args.work / name / "model", shards)
    for name, row in rows.items():
        print(f"{name:10s} {row}", flush=True)
    write_json(
        OUT,
        {
            "settings": {
                "teacher_minutes": args.teacher_minutes,
                "student_steps": args.steps,
                "student": STUDENT,
                "alpha": args.alpha,
                "temperature": args.temperature,
            },
            "models": rows,
            "student_to_teacher_parameters": round(
                rows["student"]["parameters"] / rows["teacher"]["parameters"], 3
            ),
            "machine": machine("cpu"),
        },
    )


if __name__ == "__main__":
    main()
