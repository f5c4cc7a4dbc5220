"""Chat templates, instruction tuning and ``lmforge chat``: rendering equals transformers'
``apply_chat_template``; the answer-only mask is right token by token; a packed row trains exactly like
its conversations one by one; a decoder fine-tuned through the loop answers what it learnt, through
``ChatSession`` and through the terminal (a pseudo-terminal: keys in, screen out)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer

from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.infer.chat import ChatSession
from lmforge.infer.sampling import GenerationConfig
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.models.io import load_model, save_model
from lmforge.models.losses import IGNORE_INDEX
from lmforge.tasks.instruct import PackedRows, best_fit, read_conversations
from lmforge.tokenizer.chat import CHATML, encode_chat, render_chat
from lmforge.tokenizer.core import Tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

# SmolLM2-135M-Instruct's template, as its tokenizer_config.json holds it (Apache-2.0).
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)
# A template in another style: bos_token, a role label, the system message folded into the first turn.
LABELLED = (
    "{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}[{{ m.content }}] "
    "{% elif m.role == 'user' %}User: {{ m.content }}\n{% else %}Bot: {{ m.content }}{{ eos_token }}\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}Bot:{% endif %}"
)
# transformers' answer marks, {% generation %} blocks (rendered as their bodies).
MARKED = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}{% generation %}"
    "{{ m.content }}<|im_end|>{% endgeneration %}{% else %}{{ m.content }}<|im_end|>{% endif %}"
    "{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CONVERSATION = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "It is 4."},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "6"},
]


@pytest.fixture(scope="module")
def chatml_tokenizer(bpe_tokenizer) -> Tokenizer:
    """The test BPE with ChatML's two special tokens, <|im_end|> its eos (as SmolLM2's)."""
    backend = HFTokenizer.from_str(bpe_tokenizer.backend.to_str())
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in ("<|im_start|>", "<|im_end|>")]
    )
    return Tokenizer(
        backend, {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|pad|>"}
    )


@pytest.mark.parametrize(
    "template", [SMOLLM2, CHATML, LABELLED, MARKED], ids=["smollm2", "chatml", "labelled", "generation-marks"]
)
@pytest.mark.parametrize("prompt", [False, True], ids=["whole", "generation-prompt"])
def test_rendering_equals_transformers_apply_chat_template(template, prompt, chatml_tokenizer, tmp_path):
    from transformers import PreTrainedTokenizerFast

    chatml_tokenizer.save(tmp_path)
    hf = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    for messages in (CONVERSATION, [{"role": "system", "content": "Be terse."}, *CONVERSATION]):
        messages = messages[:-1] if prompt else messages
        expected = hf.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=prompt
        )
        assert render_chat(template, messages, chatml_tokenizer, prompt) == expected


def test_the_template_travels_with_the_tokenizer(chatml_tokenizer, tmp_path):
    """Saved in tokenizer_config.json (where transformers reads it); chat_template.jinja wins."""
    chatml_tokenizer.chat_template = SMOLLM2
    try:
        chatml_tokenizer.save(tmp_path)
    finally:
        chatml_tokenizer.chat_template = None
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["chat_template"] == SMOLLM2
    assert Tokenizer.load(tmp_path).chat_template == SMOLLM2
    (tmp_path / "chat_template.jinja").write_text(CHATML)
    assert Tokenizer.load(tmp_path).chat_template == CHATML


def test_answer_mask_token_by_token(chatml_tokenizer):
    """SmolLM2's template: the answers and their <|im_end|> are learnt; the default system message,
    the questions, the turn headers and the newline after each turn are not."""
    tok = chatml_tokenizer
    pieces = [
        (
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
            "<|im_end|>\n"
            "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
            False,
        ),
        ("It is 4.<|im_end|>", True),
        ("\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n", False),
        ("6<|im_end|>", True),
        ("\n", False),
    ]
    ids, answer = encode_chat(SMOLLM2, CONVERSATION, tok)
    assert ids == [i for text, _ in pieces for i in tok.encode(text)]
    assert answer == [flag for text, flag in pieces for _ in tok.encode(text)]
    learnt = [i for i, a in zip(ids, answer) if a]
    assert tok.decode(learnt, skip_special_tokens=False) == "It is 4.<|im_end|>6<|im_end|>"


def test_generation_marks_give_the_same_answers(chatml_tokenizer):
    assert encode_chat(MARKED, CONVERSATION, chatml_tokenizer) == encode_chat(
        CHATML, CONVERSATION, chatml_tokenizer
    )


def test_default_chatml_ends_answers_with_the_tokenizers_eos(bpe_tokenizer):
    ids, answer = encode_chat(CHATML, CONVERSATION[:2], bpe_tokenizer)
    learnt = [i for i, a in zip(ids, answer) if a]
    assert bpe_tokenizer.decode(learnt, skip_special_tokens=False) == "It is 4.<|eos|>"


def test_a_template_whose_prefixes_differ_is_refused(bpe_tokenizer):
    reversed_turns = "{% for m in messages | reverse %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    with pytest.raises(LmforgeError, match="answers cannot be found"):
        encode_chat(reversed_turns, CONVERSATION, bpe_tokenizer)


def test_conversations_from_every_format_and_errors_name_file_line_field(tmp_path):
    path = tmp_path / "mix.jsonl"
    rows = [
        {"messages": CONVERSATION[:2]},
        {"instruction": "Add", "input": "2 and 2", "output": "4", "system": "Be terse."},
        {"prompt": "Hi", "completion": "Hello"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    got = read_conversations(path)
    assert got[0] == CONVERSATION[:2]
    assert got[1] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Add\n\n2 and 2"},
        {"role": "assistant", "content": "4"},
    ]
    assert got[2][-1] == {"role": "assistant", "content": "Hello"}
    for line, match in [
        ("{oops", r"mix2.jsonl:2: not JSON"),
        ('{"messages": [{"role": "user", "content": "q"}]}', r"mix2.jsonl:2: .*last message"),
        (
            '{"messages": [{"role": "robot", "content": "q"}]}',
            r"mix2.jsonl:2: field 'messages': messages\[0\]",
        ),
        ('{"question": "q"}', r"mix2.jsonl:2: no conversation"),
    ]:
        (tmp_path / "mix2.jsonl").write_text(json.dumps(rows[2]) + "\n" + line + "\n")
        with pytest.raises(LmforgeError, match=match):
            read_conversations(tmp_path / "mix2.jsonl")


def test_best_fit_packs_every_example_once_within_capacity():
    lengths = [7, 2, 5, 3, 1, 4, 6, 2]
    rows = best_fit(lengths, 8)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 8 for r in rows)
    assert len(rows) == 4  # 30 tokens: the fewest rows of 8 that can hold them


def test_a_packed_row_trains_exactly_like_its_examples_one_by_one():
    """Same summed loss and same gradients: no attention across examples, positions from 0 in each
    (RoPE: a wrong position would change the result)."""
    torch.manual_seed(0)
    cfg = GPTConfig(
        vocab_size=50,
        max_seq_len=32,
        n_layer=2,
        n_head=2,
        d_model=32,
        pos_emb="rope",
        norm="rmsnorm",
        mlp="swiglu",
        bias=False,
        init_std=0.2,
    )
    model = GPT(cfg)
    examples = []
    for n in (9, 6, 12):
        x = torch.randint(0, 50, (n,)).tolist()
        y = [t if i % 3 else IGNORE_INDEX for i, t in enumerate(torch.randint(0, 50, (n,)).tolist())]
        examples.append((x, y))

    def summed(rows: list[list[int]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        batch = PackedRows(examples, rows, pad_id=0).collate(torch.arange(len(rows)).numpy())
        loss = model(
            batch["input_ids"],
            positions=batch.get("positions"),
            attention=batch.get("attention"),
            targets=batch["targets"],
        )
        total = loss * (batch["targets"] != IGNORE_INDEX).sum()
        total.backward()
        return total.detach(), [p.grad.clone() for p in model.parameters()]

    packed, packed_grads = summed([[0, 1, 2]])
    alone, alone_grads = summed([[0], [1], [2]])
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
    for a, b in zip(packed_grads, alone_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# --- fine-tuned through the loop, then chatted with ------------------------------------------------------

PAIRS = {"ping": "pong", "hello there": "general kenobi", "how are you?": "fine, thanks"}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, bpe_tokenizer) -> Path:
    """A tiny random decoder instruction-tuned on three exchanges (lmforge's ChatML, its eos ending
    each answer) until it knows them."""
    work = tmp_path_factory.mktemp("sft")
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=bpe_tokenizer.vocab_size, max_seq_len=96, n_layer=2, n_head=2, d_model=64)
    base = save_model(GPT(cfg), bpe_tokenizer, work / "base")
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in PAIRS.items()
    ]
    (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows * 8))
    (work / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    main(
        [
            "finetune",
            "instruct",
            "--model",
            str(base),
            "--train",
            str(work / "train.jsonl"),
            "--dev",
            str(work / "dev.jsonl"),
            "--out",
            str(work / "run"),
            "max_steps=60",
            "batch_size=2",
            "task.max_len=96",
            "optim.lr=3e-3",
            "optim.warmup_steps=5",
            "eval_every=30",
            "log_every=10",
            "progress=false",
            "threads=1",
        ]
    )
    return work / "run"


def test_instruction_tuning_learns_the_answers_and_exports_the_template(tuned):
    losses = [json.loads(line) for line in (tuned / "metrics.jsonl").read_text().splitlines()]
    train = [m["loss"] for m in losses if "loss" in m]
    assert train[-1] < train[0] / 5
    model, tokenizer = load_model(tuned / "model")
    assert tokenizer.chat_template == CHATML
    for question, answer in PAIRS.items():
        session = ChatSession(model, tokenizer, GenerationConfig(max_new_tokens=16, temperature=0.0))
        assert session.reply(question) == answer


def test_history_drops_the_oldest_exchanges_to_fit_the_context(bpe_tokenizer):
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(vocab_size=bpe_tokenizer.vocab_size, max_seq_len=128, n_layer=1, n_head=2, d_model=16)
    )
    session = ChatSession(model, bpe_tokenizer, GenerationConfig(max_new_tokens=16), system="Be kind.")
    long = " ".join("abcdefghijklmnopqrst")
    session.turns = [
        {"role": "user", "content": f"one {long}"},
        {"role": "assistant", "content": f"two {long}"},
        {"role": "user", "content": f"three {long}"},
        {"role": "assistant", "content": f"four {long}"},
        {"role": "user", "content": "five"},
    ]
    prompt = session.prompt()
    assert len(bpe_tokenizer.encode(prompt)) <= 128 - 16
    assert prompt.startswith("<|im_start|>system\nBe kind.") and "five" in prompt and "one" not in prompt
    assert session.turns[0]["content"].split()[0] in ("three", "five")
    with pytest.raises(LmforgeError, match="send a shorter one"):
        list(session.send(" ".join(["word"] * 150)))
    assert session.turns[-1]["content"] == "five"  # the refused message did not join the history
    session.turns = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how are you"},
        {"role": "assistant", "content": "fine"},
    ]
    with pytest.raises(LmforgeError, match="send a shorter one"):
        list(session.send(" ".join(["word"] * 150)))
    assert [t["content"] for t in session.turns] == ["hi", "hello", "how are you", "fine"]  # nothing lost


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]|\r")


class Terminal:
    """``lmforge chat`` on a pseudo-terminal: type lines, read the screen."""

    def __init__(self, argv: list[str]):
        self.fd, child = pty.openpty()
        env = {**os.environ, "TERM": "dumb", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lmforge", *argv],
            stdin=child,
            stdout=child,
            stderr=child,
            env=env,
            close_fds=True,
        )
        os.close(child)
        self.screen = ""

    def read_until(self, text: str, timeout: float = 60.0) -> str:
        """The screen's new text up to and including ``text``."""
        end = time.time() + timeout
        while text not in self.screen:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, end - time.time()))
            if not ready:
                raise AssertionError(f"no {text!r} on the screen after {timeout} s:\n{self.screen}")
            try:
                self.screen += ANSI.sub("", os.read(self.fd, 4096).decode("utf-8", "replace"))
            except OSError:  # the child closed the terminal
                raise AssertionError(f"the chat ended before {text!r}:\n{self.screen}") from None
        shown, _, self.screen = self.screen.partition(text)
        return shown + text

    def type(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode())


def test_chat_in_a_terminal(tuned):
    term = Terminal(["chat", str(tuned / "model"), "--temperature", "0", "--max-new-tokens", "16"])
    try:
        assert "/reset" in term.read_until("> ")
        term.type("ping")
        assert term.read_until("> ").splitlines()[-2].strip() == "pong"  # echo, answer, prompt
        term.type("/system Answer briefly.")
        assert "(system message set)" in term.read_until("> ")
        term.type("/system")  # removed again: the model learnt its answers without one
        assert "(system message removed)" in term.read_until("> ")
        term.type("/reset")
        assert "(conversation reset)" in term.read_until("> ")
        term.type("hello there")
        assert term.read_until("> ").splitlines()[-2].strip() == "general kenobi"
        term.type("/nonsense")
        assert "unknown command /nonsense" in term.read_until("> ")
        term.type("/exit")
        assert term.proc.wait(timeout=30) == 0
    finally:
        term.proc.kill()
        os.close(term.fd)


def test_one_shot_messages(tuned, capsys):
    argv = [
        "chat",
        str(tuned / "model"),
        "--temperature",
        "0",
        "--message",
        "ping",
        "--message",
        "how are you?",
    ]
    assert main(argv) == 0
    assert capsys.readouterr().out == "pong\nfine, thanks\n"


def test_the_tuned_model_served_answers_as_lmforge_chat(tuned, capsys):
    """/v1/chat/completions from the official client: the answer it learnt, the text `lmforge chat`
    prints for the same greedy request."""
    from lmforge.serve.app import create_app
    from lmforge.serve.config import ServeConfig
    from test_serve import client, serving

    argv = ["chat", str(tuned / "model"), "--temperature", "0", "--max-new-tokens", "16"]
    with serving(create_app(tuned / "model", ServeConfig(max_batch=2))) as base:
        for question, answer in PAIRS.items():
            messages = [{"role": "user", "content": question}]
            chat = client(base).chat.completions.create(
                model="model", messages=messages, max_tokens=16, temperature=0
            )
            assert chat.choices[0].message.content == answer
            assert chat.choices[0].finish_reason == "stop"
            assert main([*argv, "--message", question]) == 0
            assert capsys.readouterr().out == answer + "\n"
