"""Zero-shot scoring (evaluate/loglik.py, evaluate/zeroshot.py): the batched, prefix-sharing scorer
against a literal transcription of loglik(c | x) = sum_j log p(c_j | x, c_<j) on the full sequence, the
harness's token split, acc vs acc_norm on hand-made cases, and each task's reader on its file format
(and on the real files' counts when ../shared is there)."""

from __future__ import annotations

import bz2
import gzip
import json
import math
import re
from pathlib import Path

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.evaluate.loglik import encode_pair, score_requests
from lmforge.evaluate.perplexity import sliding_nll
from lmforge.evaluate.wikitext import detokenize, run_wikitext, wikitext_pages
from lmforge.evaluate.zeroshot import TASKS, Item, hellaswag_preprocess, run_task, stderr, task_metrics
from lmforge.models.gpt import GPT, GPTConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=300, max_seq_len=24, n_layer=2, n_head=2, d_model=32)).eval()


def literal(model, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """The formula on the whole sequence, one position at a time (the model's last max_seq_len + 1
    tokens, as the harness cuts)."""
    ids = (context + continuation)[-(model.config.max_seq_len + 1) :]
    with torch.no_grad():
        logp = model(torch.tensor([ids[:-1]]))[0].log_softmax(dim=-1)
    total, greedy = 0.0, True
    for j, token in enumerate(continuation):
        row = logp[len(ids) - len(continuation) - 1 + j]
        total += float(row[token])
        greedy &= int(row.argmax()) == token
    return total, greedy


def test_batched_shared_context_scores_equal_the_formula(model):
    g = torch.Generator().manual_seed(1)
    rand = lambda n: torch.randint(4, 300, (n,), generator=g).tolist()  # noqa: E731
    contexts = [rand(3), rand(11), rand(1), rand(30)]  # left padding; the last one is cut from the left
    continuations = [[rand(1), rand(4)], [rand(2), rand(2), rand(6)], [rand(5)], [rand(3), rand(1)]]
    questions = [[(c, x) for x in choices] for c, choices in zip(contexts, continuations)]
    got = score_requests(model, questions, batch_tokens=20)  # several batches
    for context, choices, scores in zip(contexts, continuations, got):
        assert len(scores) == len(choices)
        for choice, score in zip(choices, scores):
            want, greedy = literal(model, context, choice)
            assert score.loglik == pytest.approx(want, abs=1e-4)
            assert score.greedy == greedy and score.tokens == len(choice)


def test_requests_share_only_their_contexts_common_prefix(model):
    g = torch.Generator().manual_seed(2)
    rand = lambda n: torch.randint(4, 300, (n,), generator=g).tolist()  # noqa: E731
    base = rand(6)
    questions = [
        [(base + rand(3), rand(2)), (base + rand(1), rand(4)), (base, rand(3))],  # Winogrande-like
        [([1, *rand(4)], rand(2)), ([2, *rand(5)], rand(1))],  # nothing shared: scored one by one
        [(base + rand(20), rand(3)), (base + rand(2), rand(2))],  # too long together: split, cut
        [(rand(3), rand(30))],  # a continuation longer than the window: its last tokens that fit
    ]
    for batch_tokens in (1, 4096):  # a row per forward, or every tree packed side by side
        got = score_requests(model, questions, batch_tokens)
        for requests, scores in zip(questions[:3], got):
            for (context, continuation), score in zip(requests, scores):
                want, greedy = literal(model, context, continuation)
                assert score.loglik == pytest.approx(want, abs=1e-4) and score.greedy == greedy
        assert got[3][0].tokens == model.config.max_seq_len


def test_greedy_is_true_when_every_continuation_token_is_the_argmax(model):
    context = [5, 6, 7]
    with torch.no_grad():
        first = int(model(torch.tensor([context]))[0, -1].argmax())
        second = int(model(torch.tensor([[*context, first]]))[0, -1].argmax())
    scores = score_requests(model, [[(context, [first, second]), (context, [first, (second + 1) % 300])]])[0]
    assert scores[0].greedy and not scores[1].greedy


def test_the_token_split_is_the_harness_one(bpe_tokenizer):
    context, continuation = encode_pair(bpe_tokenizer, "The cat sat ", "on the mat")
    assert context == bpe_tokenizer.encode("The cat sat")  # the trailing space moves to the continuation
    assert context + continuation == bpe_tokenizer.encode("The cat sat on the mat")


def test_acc_takes_the_sum_and_acc_norm_divides_by_characters():
    item = Item(["Q"], ["a", "bbbb"], gold=1, lengths=[1, 4])
    metrics = task_metrics("piqa", [item, item], [[-2.0, -4.0], [-2.0, -4.0]], [[False, False]] * 2)
    assert metrics["acc"] == 0.0  # -2 > -4: choice 0
    assert metrics["acc_norm"] == 1.0  # -2/1 < -4/4: choice 1
    assert "acc_norm" not in task_metrics("winogrande", [item], [[-2.0, -4.0]], [[False, False]])
    lam = task_metrics("lambada", [item, item], [[-1.0], [-3.0]], [[True], [False]])
    assert lam["acc"] == 0.5 and lam["perplexity"] == pytest.approx(math.exp(2.0))
    assert stderr([1.0, 0.0, 1.0, 1.0]) == pytest.approx(0.5 / math.sqrt(4))  # sample sd 0.5


def write_fixtures(root: Path) -> None:
    """Two items per task, in each official file format."""
    (root / "hellaswag").mkdir(parents=True)
    with bz2.open(root / "hellaswag" / "hellaswag_val_full.txt.bz2", "wt", encoding="utf-8") as f:
        for ctx, gold in (("Roof: a man is on a roof. he", 2), ("[header] How to x [title] Do y", 0)):
            f.write(f"{ctx}\n{gold}\n is sleeping.\n [step] climbs down.\n fixes the roof.\n sings.\n")
    (root / "arc").mkdir()
    for name in ("arc_easy", "arc_challenge"):
        rows = [{"query": "Question: What melts ice?", "choices": ["heat", "cold"], "gold": 0}] * 2
        (root / "arc" / f"{name}_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "piqa").mkdir()
    rows = [{"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the lid"}] * 2
    (root / "piqa" / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "piqa" / "valid-labels.lst").write_text("0\n0\n")
    (root / "winogrande").mkdir()
    row = {"sentence": "The cup fell off the shelf because _ was unstable.", "option1": "the cup",
           "option2": "the shelf", "answer": "2"}  # fmt: skip
    (root / "winogrande" / "dev.jsonl").write_text((json.dumps(row) + "\n") * 2)
    (root / "lambada").mkdir()
    with gzip.open(root / "lambada" / "lambada_openai.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write((json.dumps({"context": "He opened the", "continuation": "door"}) + "\n") * 2)


def test_readers_build_the_harness_prompts(tmp_path):
    write_fixtures(tmp_path)
    hs = TASKS["hellaswag"](tmp_path)
    assert hs[0].contexts == ["Roof: a man is on a roof. he"] and hs[0].gold == 2
    assert hs[0].choices[1] == " climbs down."  # the harness strips before dropping tags, as here
    assert hs[0].choices[0] == "is sleeping." and hs[0].lengths[0] == len("is sleeping.")
    assert hs[1].contexts == [" How to x. Do y"]
    assert hellaswag_preprocess(" A [title] B [step] c ") == "A. B c"
    arc = TASKS["arc_easy"](tmp_path)[0]
    assert arc.contexts == ["Question: What melts ice?\nAnswer:"] and arc.choices == ["heat", "cold"]
    piqa = TASKS["piqa"](tmp_path)[0]
    assert piqa.contexts == ["Question: Open a jar\nAnswer:"] and piqa.gold == 0
    wino = TASKS["winogrande"](tmp_path)[0]
    assert wino.contexts == [
        "The cup fell off the shelf because the cup",
        "The cup fell off the shelf because the shelf",
    ]
    assert wino.choices == ["was unstable.", "was unstable."] and wino.gold == 1
    lam = TASKS["lambada"](tmp_path)[0]
    assert lam.contexts == ["He opened the"] and lam.choices == ["door"]


def test_a_task_runs_end_to_end_with_per_item_logliks(tmp_path, model, bpe_tokenizer):
    write_fixtures(tmp_path)
    for task in TASKS:
        result = run_task(model, bpe_tokenizer, task, tmp_path, limit=1)
        assert result["items"] == 1 and 0.0 <= result["acc"] <= 1.0
        item = result["per_item"][0]
        choices = {"hellaswag": 4, "lambada": 1}.get(task, 2)
        assert len(item["loglik"]) == choices and all(x < 0 for x in item["loglik"])
    wino = run_task(model, bpe_tokenizer, "winogrande", tmp_path)["per_item"][0]
    for option, loglik in zip(("the cup", "the shelf"), wino["loglik"]):
        context, continuation = encode_pair(
            bpe_tokenizer, f"The cup fell off the shelf because {option}", " was unstable."
        )
        assert loglik == pytest.approx(literal(model, context, continuation)[0], abs=1e-4)


def test_a_damaged_line_is_named_by_file_and_line(tmp_path):
    write_fixtures(tmp_path)
    path = tmp_path / "piqa" / "valid.jsonl"
    path.write_text(path.read_text() + "{oops\n")
    (tmp_path / "piqa" / "valid-labels.lst").write_text("0\n0\n1\n")
    with pytest.raises(LmforgeError, match=r"valid.jsonl:3: not a JSON line"):
        TASKS["piqa"](tmp_path)


COUNTS = {
    "hellaswag": 10042,
    "arc_easy": 2376,
    "arc_challenge": 1172,
    "piqa": 1838,
    "winogrande": 1267,
    "lambada": 5153,
}


def test_the_real_files_have_their_official_sizes(shared_data):
    folder = shared_data / "eval"
    if not folder.is_dir():
        pytest.skip("no ../shared/data/eval here")
    for task, count in COUNTS.items():
        items = TASKS[task](folder)
        assert len(items) == count, task
        assert all(0 <= it.gold < len(it.choices) for it in items)


def harness_windows(tokens: list[int], prefix: int, width: int) -> list[tuple[list[int], list[int]]]:
    """(inputs, targets) of lm-evaluation-harness's rolling windows with context 1, transcribed: the
    first window is the prefix token then the first width - 1 tokens; each next one predicts the next
    width tokens from the width tokens before its end."""
    first = min(width, len(tokens))
    windows = [([prefix, *tokens[: first - 1]], tokens[:first])]
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, width)
        end = done + n
        windows.append((tokens[end - width - 1 : end - 1], tokens[end - n : end]))
        done = end
    return windows


def test_rolling_windows_score_every_token_once_within_the_context():
    tokens = list(range(10, 33))  # 23 tokens
    windows = harness_windows(tokens, prefix=1, width=8)
    assert windows[0] == ([1, *tokens[:7]], tokens[:8])  # the prefix token, then 7: predicts tokens 0..7
    assert [len(t) for _, t in windows] == [8, 8, 7] and all(len(inputs) <= 8 for inputs, _ in windows)
    assert windows[1][0] == tokens[7:15] and windows[2][0] == tokens[14:22]  # full context for the last
    assert [t for _, targets in windows for t in targets] == tokens  # every token once


def test_rolling_loglik_is_the_sum_over_its_windows(model):
    """WikiText's log-likelihood (sliding_nll over prefix + tokens, stride = context) is the sum over
    the harness's windows, each scored on its own."""
    g = torch.Generator().manual_seed(4)
    tokens = torch.randint(4, 300, (60,), generator=g).tolist()  # 3 windows of the 24-token context
    want = 0.0
    for inputs, targets in harness_windows(tokens, 1, 24):
        with torch.no_grad():
            logp = model(torch.tensor([inputs]))[0].log_softmax(dim=-1)
        want += sum(float(logp[len(inputs) - len(targets) + j, t]) for j, t in enumerate(targets))
    assert -sliding_nll(model, [1, *tokens], 24, 24)[0] == pytest.approx(want, abs=1e-3)
    short = tokens[:10]  # one window: the prefix then the text, scored as a whole sequence
    with torch.no_grad():
        logp = model(torch.tensor([[1, *short[:-1]]]))[0].log_softmax(dim=-1)
    whole = sum(float(logp[j, t]) for j, t in enumerate(short))
    assert -sliding_nll(model, [1, *short], 24, 24)[0] == pytest.approx(whole, abs=1e-4)


def test_wikitext_pages_detokenizer_and_counts(tmp_path, model, bpe_tokenizer):
    raw = (
        " \n = Alpha = \n \n Alpha is a 1 @,@ 000 @-@ year story , it 's old . \n \n = = Part = = \n x \n"
        " = Beta = \n Beta ( b ) . \n"
    )
    pages = wikitext_pages(raw)
    assert len(pages) == 2 and pages[0].startswith(" = Alpha = ") and "= = Part = =" in pages[0]
    assert (
        detokenize(" Alpha is a 1 @,@ 000 @-@ year story , it 's old . ")
        == " Alpha is a 1,000-year story, it's old. "
    )
    assert detokenize(" = = Part = = \n Beta ( b ) . \n") == " == Part ==\nBeta (b).\n"
    path = tmp_path / "wiki.test.raw"
    path.write_text(raw, encoding="utf-8")
    result = run_wikitext(model, bpe_tokenizer, path)
    words = sum(len(re.split(r"\s+", p)) for p in pages)  # counted on the tokenised original
    nbytes = sum(len(p.encode()) for p in pages)
    total = sum(item["loglik"] for item in result["per_item"])
    assert result["items"] == 2
    assert result["word_perplexity"] == pytest.approx(math.exp(-total / words))
    assert result["bits_per_byte"] == pytest.approx(-total / nbytes / math.log(2))
