"""``lmforge eval <task>``: evaluation commands (perplexity on token shards, text classification, named
entities, extractive QA, translation, summarization)."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from lmforge.config import Flag, add_config_arguments, config_from_args
from lmforge.errors import LmforgeError
from lmforge.evaluate.classify import ClassifyEvalConfig
from lmforge.evaluate.config import PerplexityConfig
from lmforge.evaluate.ner import NerEvalConfig
from lmforge.evaluate.qa import QAEvalConfig
from lmforge.evaluate.seq2seq import Seq2SeqEvalConfig
from lmforge.evaluate.zeroshot import SuiteConfig


def register(sub: argparse._SubParsersAction) -> None:
    tasks = sub.add_parser("eval", help="evaluate a model").add_subparsers(
        dest="eval_command", required=True, metavar="<task>"
    )
    p = tasks.add_parser("perplexity", help="perplexity (exp of mean cross-entropy) on a shards split")
    p.add_argument(
        "model", help="a run folder (uses its exported model or last checkpoint) or a model folder"
    )
    add_config_arguments(
        p, PerplexityConfig, ["data", "split", "seq_len", "batch_size", "max_tokens", "device"]
    )
    p.set_defaults(func=run_perplexity)

    c = tasks.add_parser("classify", help="accuracy, macro-F1, per-class P/R/F1 and confusion matrix")
    c.add_argument("model", help="a fine-tuned model folder, or the run folder that exported it")
    add_config_arguments(c, ClassifyEvalConfig, ["data", "out", "batch_size", "max_len", "device"])
    c.set_defaults(func=run_classify)

    q = tasks.add_parser("qa", help="extractive QA: SQuAD v1.1 exact match and F1, and the predictions")
    q.add_argument("model", help="a fine-tuned span model folder, or the run folder that exported it")
    flags = ["data", "out", "batch_size", "max_len", "stride", "max_answer_tokens", "device"]
    add_config_arguments(q, QAEvalConfig, flags)
    q.set_defaults(func=run_qa)

    for task, summary in SEQ2SEQ.items():
        t = tasks.add_parser(task, help=summary)
        t.add_argument("model", help="a trained encoder-decoder's model folder, or the run that exported it")
        flags = ["data", "out", "batch_size", Flag("num_beams", name="beams"), "length_penalty"]
        flags += ["no_repeat_ngram_size", "max_new_tokens", "limit", "device"]
        add_config_arguments(t, Seq2SeqEvalConfig, flags)
        t.set_defaults(func=run_seq2seq, task=task)

    z = tasks.add_parser("suite", help="zero-shot benchmarks by log-likelihood (HellaSwag, ARC, PIQA, ...)")
    z.add_argument("model", help="a decoder's model folder, or the run folder that exported it")
    add_config_arguments(
        z, SuiteConfig, ["data", "tasks", "limit", "batch_tokens", "wikitext", "out", "device"]
    )
    z.set_defaults(func=run_suite)

    n = tasks.add_parser("ner", help="entity-level precision/recall/F1 per type, token accuracy (CoNLL)")
    n.add_argument("model", help="a fine-tuned tagger's model folder, or the run folder that exported it")
    add_config_arguments(n, NerEvalConfig, ["data", "out", "batch_size", "max_len", "device"])
    n.set_defaults(func=run_ner)


SEQ2SEQ = {
    "translate": "generate translations (beam search) and score them: sacreBLEU BLEU and chrF",
    "summarize": "generate summaries (beam search) and score them: ROUGE-1/2/L/Lsum (stemmed)",
}


def report_name(task: str, data: str) -> str:
    """``eval-<task>-<data file name without .gz and its extension>``: emerging.dev.conll and
    emerging.test.annotated keep distinct names."""
    from pathlib import Path

    return f"eval-{task}-" + Path(data).name.removesuffix(".gz").rsplit(".", 1)[0]


def run_perplexity(args: argparse.Namespace) -> int:
    import json

    from lmforge.evaluate.perplexity import load_for_eval, perplexity

    cfg = config_from_args(PerplexityConfig, args)
    model, seq_len, tokenizer = load_for_eval(args.model, cfg.device)
    result = perplexity(
        model, cfg.data, cfg.split, cfg.seq_len or seq_len, cfg.batch_size, cfg.max_tokens, tokenizer
    )
    print(json.dumps(result, indent=2))
    return 0


def run_classify(args: argparse.Namespace) -> int:
    """Score the model on a labelled file; print the report and write it (JSON + PNG) beside the model
    folder, i.e. in its run folder, or in --out."""

    from lmforge.evaluate.classify import (
        check_labels,
        evaluate_examples,
        format_report,
        load_classifier,
        model_folder,
        read_examples,
        write_report,
    )

    cfg = config_from_args(ClassifyEvalConfig, args)
    model, tokenizer, max_len = load_classifier(args.model, cfg.device)
    examples = read_examples(cfg.data, cfg.text_field, cfg.label_field)
    check_labels(examples, model.config.labels, cfg.label_field)
    report = evaluate_examples(model, tokenizer, examples, cfg.max_len or max_len, cfg.batch_size)
    folder = model_folder(args.model)
    report = {"model": str(folder), "data": cfg.data, **report}
    name = report_name("classify", cfg.data)
    json_path, png = write_report(report, cfg.out or folder.resolve().parent, name)
    print(format_report(report))
    print(f"wrote {json_path} and {png}")
    return 0


def run_ner(args: argparse.Namespace) -> int:
    """Tag a CoNLL file's words; print the report and write it (JSON) beside the model folder, i.e. in
    its run folder, or in --out."""

    from lmforge.evaluate.classify import model_folder
    from lmforge.evaluate.ner import evaluate_sentences, format_report, load_tagger, read_conll, write_report

    cfg = config_from_args(NerEvalConfig, args)
    model, tokenizer, max_len = load_tagger(args.model, cfg.device)
    sentences = read_conll(cfg.data)
    report = evaluate_sentences(model, tokenizer, sentences, cfg.max_len or max_len, cfg.batch_size)
    folder = model_folder(args.model)
    report = {"model": str(folder), "data": cfg.data, **report}
    name = report_name("ner", cfg.data)
    json_path = write_report(report, cfg.out or folder.resolve().parent, name)
    print(format_report(report))
    print(f"wrote {json_path}")
    return 0


def run_qa(args: argparse.Namespace) -> int:
    """Answer every question of a SQuAD file; print EM/F1 and write the report and the {id: answer}
    predictions beside the model folder, i.e. in its run folder, or in --out."""

    from lmforge.evaluate.classify import model_folder
    from lmforge.evaluate.qa import load_reader, predict_answers, qa_report, read_squad, write_qa_report

    cfg = config_from_args(QAEvalConfig, args)
    model, tokenizer, recorded = load_reader(args.model, cfg.device)
    settings = cfg.settings(recorded)
    questions = read_squad(cfg.data)
    predictions = predict_answers(model, tokenizer, questions, batch_size=cfg.batch_size, **settings)
    folder = model_folder(args.model)
    report = {"model": str(folder), "data": cfg.data, **settings, **qa_report(questions, predictions)}
    name = report_name("qa", cfg.data)
    paths = write_qa_report(report, questions, predictions, cfg.out or folder.resolve().parent, name)
    print(f"exact match {report['exact_match']:.2f}  F1 {report['f1']:.2f}  ({len(questions)} questions)")
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


def run_seq2seq(args: argparse.Namespace) -> int:
    """Translate or summarize every source of a file of pairs; print the scores and write the report and
    the outputs beside the model folder, i.e. in its run folder, or in --out."""
    from lmforge.evaluate.classify import model_folder
    from lmforge.evaluate.seq2seq import (
        evaluate_pairs,
        format_report,
        load_seq2seq,
        read_eval_pairs,
        write_report,
    )

    cfg = config_from_args(Seq2SeqEvalConfig, args)
    model, tokenizer, meta = load_seq2seq(args.model, cfg.device)
    pairs = read_eval_pairs(cfg, meta)
    report, outputs = evaluate_pairs(model, tokenizer, pairs, cfg, args.task, meta)
    folder = model_folder(args.model)
    report = {"model": str(folder), "data": cfg.data, **report}
    paths = write_report(
        report,
        outputs,
        Path(cfg.out) if cfg.out else folder.resolve().parent,
        report_name(args.task, cfg.data),
    )
    print(format_report(report))
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


def run_suite(args: argparse.Namespace) -> int:
    """Score the zero-shot tasks; print the table and write the reports beside the model folder, i.e. in
    its run folder, or in --out."""
    from lmforge.device import heap_allocator, pick_dtype
    from lmforge.evaluate.classify import model_folder
    from lmforge.evaluate.perplexity import load_for_eval
    from lmforge.evaluate.wikitext import run_wikitext
    from lmforge.evaluate.zeroshot import format_table, run_task, write_suite
    from lmforge.models.amx import fp32_on_amx

    cfg = config_from_args(SuiteConfig, args)
    model, _, tokenizer = load_for_eval(args.model, cfg.device)
    model.to(pick_dtype(cfg.dtype, model.lm_head.weight.device))
    if tokenizer is None:
        raise LmforgeError(f"{args.model}: no tokenizer found beside the model")
    results = []
    precision = "bf16x6" if cfg.matmul == "auto" else cfg.matmul
    amx = fp32_on_amx(model, precision) if precision != "fp32" else contextlib.nullcontext(False)
    with heap_allocator(), amx as on_amx:  # each batch's activations reuse the last one's pages
        if cfg.matmul not in ("auto", "fp32") and not on_amx:
            print(f"matmul={cfg.matmul}: no AMX on this CPU; PyTorch's fp32 matmul runs")
        for task in cfg.task_list:
            if task == "wikitext":
                path = cfg.wikitext or Path(cfg.data) / "wikitext2" / "wiki.test.raw"
                results.append(run_wikitext(model, tokenizer, path, cfg.limit))
            else:
                results.append(run_task(model, tokenizer, task, Path(cfg.data), cfg.limit, cfg.batch_tokens))
            print(format_table(results[-1:]).splitlines()[-1], flush=True)
    folder = model_folder(args.model)
    path = write_suite(results, Path(cfg.out) if cfg.out else folder.resolve().parent, str(folder))
    print(format_table(results))
    print(f"wrote {path} (and eval-<task>.json with every item, eval-suite.png)")
    return 0
