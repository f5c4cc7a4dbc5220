"""One small model for every seed task: SmolLM2-135M-Instruct instruction-tuned on a mix of the labelled
sets in ``$LMFORGE_SHARED/data`` (translate de→en, summarize a dialogue, answer a question from a text,
classify a review's sentiment, list a tweet's named entities), then evaluated on held-out items of each
through the chat path (the model's template with the assistant's turn opened, as ``lmforge serve`` renders
/v1/chat/completions; greedy), before (zero-shot) and after (LoRA and full fine-tuning), each task with
its own metric: sacreBLEU, ROUGE-L, SQuAD F1, accuracy, entity F1.

    python benchmarks/instruct.py [--train-per-task 300] [--test-per-task 100] [--minutes 20]

Where the items come from (train / held-out test, disjoint): Multi30k train / test_2016_flickr; DialogSum
train / test (its three references); SQuAD v1.1 dev (only the dev set is local): articles split in two,
train questions from the first, test from the other; SST-2 train / dev (the test file has no labels);
WNUT-17 train / test. Entity F1 compares the (type, text) pairs the model lists with the gold ones
(micro P/R/F1 over multisets), the entities read from the BIO tags.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _report import machine, write_json
from quantize import SHARED, smollm2

NER_TYPES = ("person", "location", "corporation", "product", "creative-work", "group")
ASK = {
    "translate": "Translate this German sentence into English. Reply with the translation only.\n\n{x}",
    "summarize": "Summarize this dialogue in one or two sentences.\n\n{x}",
    "qa": "Answer the question with a short phrase copied from the text.\n\nText: {context}\n\n"
    "Question: {question}",
    "sentiment": "Is the sentiment of this movie review positive or negative? Answer with one word.\n\n{x}",
    "ner": "List the named entities in this tweet, one per line as `type: entity`, where type is one of "
    f"{', '.join(NER_TYPES)}. If there are none, answer `none`.\n\n{{x}}",
}
# Dialogues are long and their summaries short: fewer of them keep the budget for the other tasks.
TRAIN_SHARE = {"summarize": 2 / 3}
MAX_NEW = {"translate": 64, "summarize": 96, "qa": 32, "sentiment": 16, "ner": 64}


def _lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def _jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _entities(words: list[str], tags: list[str]) -> list[str]:
    """'type: text' of each BIO entity."""
    out, current = [], None
    for word, tag in [*zip(words, tags), ("", "O")]:
        if tag.startswith("I-") and current and current[0] == tag[2:]:
            current[1].append(word)
            continue
        if current:
            out.append(f"{current[0]}: {' '.join(current[1])}")
        current = (tag[2:], [word]) if tag != "O" else None
    return out


def _conll(path: Path) -> list[tuple[list[str], list[str]]]:
    sentences, words, tags = [], [], []
    for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
        cols = line.split("\t") if "\t" in line else line.split()
        if len(cols) >= 2:
            words.append(cols[0])
            tags.append(cols[-1])
        elif words:
            sentences.append((words, tags))
            words, tags = [], []
    return sentences


def items(task: str, split: str) -> list[dict[str, Any]]:
    """Every item of a task's split: the question's fields and the reference(s)."""
    d = SHARED
    if task == "translate":
        name = "train" if split == "train" else "test_2016_flickr"
        de, en = (_lines(d / "translation/multi30k" / f"{name}.{lang}.gz") for lang in ("de", "en"))
        return [{"x": s, "ref": t} for s, t in zip(de, en) if s.strip() and t.strip()]
    if task == "summarize":
        name = "dialogsum.train.jsonl.gz" if split == "train" else "dialogsum.test.jsonl"
        rows = _jsonl(d / "summarization/dialogsum" / name)
        refs = ("summary",) if split == "train" else ("summary1", "summary2", "summary3")
        return [{"x": r["dialogue"], "ref": [r[k] for k in refs if r.get(k)]} for r in rows]
    if task == "qa":
        with gzip.open(d / "qa/squad-v1.1/dev-v1.1.json.gz", "rt", encoding="utf-8") as f:
            articles = json.load(f)["data"]
        half = len(articles) // 2
        chosen = articles[:half] if split == "train" else articles[half:]
        return [
            {"context": p["context"], "question": q["question"], "ref": [a["text"] for a in q["answers"]]}
            for a in chosen
            for p in a["paragraphs"]
            for q in p["qas"]
        ]
    if task == "sentiment":
        path = d / "classification/sst2" / ("train.tsv.gz" if split == "train" else "dev.tsv")
        text = "\n".join(_lines(path)) if path.suffix == ".gz" else path.read_text(encoding="utf-8")
        rows = [line.split("\t") for line in text.splitlines()[1:] if "\t" in line]
        return [{"x": s, "ref": "positive" if label == "1" else "negative"} for label, s in rows]
    name = "wnut17train.conll" if split == "train" else "emerging.test.annotated"
    rows = _conll(d / "ner/wnut17" / name)
    return [{"x": " ".join(w), "ref": "\n".join(_entities(w, t)) or "none"} for w, t in rows]


def question(task: str, item: dict[str, Any]) -> str:
    return ASK[task].format(**item)


def answer(task: str, item: dict[str, Any]) -> str:
    ref = item["ref"]
    return ref[0] if isinstance(ref, list) else ref


def build(work: Path, per_task: int, test_per_task: int, seed: int = 0) -> dict[str, list[dict]]:
    """train.jsonl / dev.jsonl conversations in ``work`` (shuffled mix) and the held-out test items."""
    train, dev, tests = [], [], {}
    for task in ASK:
        pool = items(task, "train")
        random.Random(f"{seed}:{task}:train").shuffle(pool)
        if task == "ner":  # most tweets name no entity: learn the format from ones that do (2 in 3)
            named = [it for it in pool if it["ref"] != "none"]
            pool = [*named[: 2 * per_task // 3], *[it for it in pool if it["ref"] == "none"]]
        n = int(TRAIN_SHARE.get(task, 1.0) * per_task)
        convo = [
            {
                "messages": [
                    {"role": "user", "content": question(task, it)},
                    {"role": "assistant", "content": answer(task, it)},
                ]
            }
            for it in pool[: n + 20]
        ]
        train += convo[:n]
        dev += convo[n:]
        test = items(task, "test")
        random.Random(f"{seed}:{task}:test").shuffle(test)
        tests[task] = test[:test_per_task]
    random.Random(seed).shuffle(train)
    for name, rows in (("train", train), ("dev", dev)):
        with open(work / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return tests


def _parse_entities(text: str) -> list[str]:
    """'type: name' per listed entity, lower-cased with single spaces (tweets' casing is erratic)."""
    out = []
    for line in text.splitlines():
        kind, _, name = line.strip().strip("-* ").partition(":")
        if name.strip() and kind.strip().lower() in NER_TYPES:
            out.append(f"{kind.strip().lower()}: {' '.join(name.lower().split())}")
    return out


def score(task: str, outputs: list[str], test: list[dict]) -> dict[str, float]:
    """The task's metric(s), in percent."""
    from lmforge.evaluate.metrics import squad_scores, squad_sums
    from lmforge.evaluate.overlap import bleu, rouge

    if task == "translate":
        return {"bleu": bleu(outputs, [it["ref"] for it in test]).score}
    if task == "summarize":
        r = rouge(outputs, [it["ref"] for it in test], ("rouge1", "rouge2", "rougeL"))
        return {k: v.f1 for k, v in r.items()}
    if task == "qa":
        return squad_scores(squad_sums(outputs, [tuple(it["ref"]) for it in test]))
    if task == "sentiment":

        def label(text: str) -> str:
            found = re.findall(r"positive|negative", text.lower())
            return found[0] if found else "?"

        return {"accuracy": 100 * sum(label(o) == it["ref"] for o, it in zip(outputs, test)) / len(test)}
    tp = fp = fn = 0
    for o, it in zip(outputs, test):
        pred, gold = Counter(_parse_entities(o)), Counter(_parse_entities(it["ref"]))
        hit = sum((pred & gold).values())
        tp, fp, fn = tp + hit, fp + sum(pred.values()) - hit, fn + sum(gold.values()) - hit
    p, r = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    return {"entity_f1": 100 * 2 * p * r / max(p + r, 1e-9), "precision": 100 * p, "recall": 100 * r}


def evaluate(model_dir: Path, tests: dict[str, list[dict]], batch: int = 16) -> dict[str, Any]:
    """Greedy answers to every test question through the chat path, and each task's metric."""
    import torch

    from lmforge.infer.generate import complete
    from lmforge.infer.sampling import GenerationConfig
    from lmforge.models.io import load_model
    from lmforge.tokenizer.chat import render_chat, template_of

    torch.manual_seed(0)
    model, tok = load_model(model_dir)
    model.eval()
    template = template_of(tok)
    out: dict[str, Any] = {}
    for task, test in tests.items():
        start = time.perf_counter()
        prompts = [
            render_chat(template, [{"role": "user", "content": question(task, it)}], tok) for it in test
        ]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        cfg = GenerationConfig(max_new_tokens=MAX_NEW[task], temperature=0.0)
        outputs = [""] * len(prompts)
        with torch.inference_mode():
            for i in range(0, len(order), batch):
                rows = order[i : i + batch]
                for r, c in zip(rows, complete(model, tok, [prompts[r] for r in rows], cfg)):
                    outputs[r] = c.text.strip()
        out[task] = {
            **{k: round(v, 2) for k, v in score(task, outputs, test).items()},
            "seconds": round(time.perf_counter() - start, 1),
            "examples": [
                {"question": question(task, it)[-200:], "output": o, "reference": it["ref"]}
                for it, o in list(zip(test, outputs))[:3]
            ],
        }
        print(f"  {task}: { {k: v for k, v in out[task].items() if k != 'examples'} }", flush=True)
    return out


def finetune(base: Path, work: Path, name: str, minutes: float, settings: list[str]) -> Path:
    out = work / name
    if not (out / "model" / "config.json").is_file():
        cmd = [
            sys.executable,
            "-m",
            "lmforge.cli",
            "finetune",
            "instruct",
            "--model",
            str(base),
            "--train",
            str(work / "train.jsonl"),
            "--dev",
            str(work / "dev.jsonl"),
            "--out",
            str(out),
            f"max_minutes={minutes}",
            "fit_schedule_to_time=true",
            *settings,
        ]
        print("$ " + " ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True)
    return out / "model"


def training(run: Path) -> dict[str, Any]:
    """What a fine-tuning run did: steps, tokens, minutes, first and last training loss, dev loss."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r]
    dev = [r["val_loss"] for r in rows if "val_loss" in r]
    return {
        "steps": train[-1]["step"],
        "tokens": train[-1]["tokens"],
        "minutes": round(train[-1]["elapsed_s"] / 60, 1),
        "loss_first": round(train[0]["loss"], 3),
        "loss_last": round(train[-1]["loss"], 3),
        **({"dev_loss": round(dev[-1], 3)} if dev else {}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/lmforge-instruct"))
    ap.add_argument("--train-per-task", type=int, default=300)
    ap.add_argument("--test-per-task", type=int, default=100)
    ap.add_argument("--minutes", type=float, default=20.0, help="CPU budget of each fine-tuning run")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    base = smollm2(args.work / "smollm2")
    tests = build(args.work, args.train_per_task, args.test_per_task)
    common = ["batch_size=4", "task.max_len=1024", "eval_every=1000", "log_every=5", "optim.warmup_steps=5"]
    runs = {
        "lora": [
            "lora.rank=16",
            "lora.alpha=32",
            "lora.targets=[attn.qkv,attn.proj,mlp.gate_up,mlp.proj]",
            "optim.lr=5e-4",
        ],
        "full": ["optim.lr=1e-4"],
    }
    result: dict[str, Any] = {
        "machine": machine("cpu"),
        "setup": {
            "train_per_task": args.train_per_task,
            "test_per_task": args.test_per_task,
            "minutes_per_run": args.minutes,
            "common": common,
            "runs": runs,
            "decoding": "greedy",
        },
    }
    print("zero-shot SmolLM2-135M-Instruct:", flush=True)
    result["zero_shot"] = evaluate(base, tests)
    write_json(args.out, result)
    for name, settings in runs.items():
        model = finetune(base, args.work, name, args.minutes, [*common, *settings])
        print(f"fine-tuned ({name}):", flush=True)
        result[name] = {"train": training(model.parent), **evaluate(model, tests)}
        write_json(args.out, result)


if __name__ == "__main__":
    main()
