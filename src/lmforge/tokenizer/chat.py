"""Conversations as text and token ids, through a chat template (Jinja) exactly as transformers'
``apply_chat_template`` renders it: the same sandbox, filters and variables (the special tokens by their
role names), so a template written for Hugging Face gives the prompt the model was trained on.

Supervised fine-tuning learns only the assistant's answers. A template marks no answers (SmolLM2's has
no ``{% generation %}`` blocks), so ``encode_chat`` finds them by rendering prefixes of the conversation:
answer i is the text between the conversation up to it with the assistant's turn opened
(``add_generation_prompt``) and the conversation up to and including it, its end-of-turn token included
and the whitespace after it left out (it is never generated: generation stops at the end-of-turn token).
A token is an answer token when its characters overlap an answer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, ClassVar

from jinja2 import TemplateError, nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lmforge.errors import LmforgeError
from lmforge.tokenizer.core import Tokenizer

# lmforge's default: ChatML (<|im_start|>role\ncontent<|im_end|>\n) with the tokenizer's eos token ending
# each turn, so generation stops at the end of an answer. For a tokenizer whose eos is <|im_end|>
# (SmolLM2, Qwen) this is ChatML exactly; for one of lmforge's own (eos <|endoftext|>) no new token is
# needed.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ROLES = ("system", "user", "assistant")

Message = dict[str, Any]


def _raise(message: str) -> None:
    raise TemplateError(message)


class _Generation(Extension):
    """transformers' ``{% generation %}...{% endgeneration %}`` (a template's mark on the assistant's
    text): rendered as its body; the answers are found by rendering prefixes either way."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _Generation]
    )
    env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def template_of(tokenizer: Tokenizer, template: str | None = None) -> str:
    """``template`` if given, else the tokenizer's own, else lmforge's ChatML."""
    return template or tokenizer.chat_template or CHATML


def render_chat(
    template: str, messages: Sequence[Message], tokenizer: Tokenizer, add_generation_prompt: bool = True
) -> str:
    """The conversation as text; ``add_generation_prompt`` opens the assistant's turn (a prompt).

    A template that rejects the conversation (``raise_exception``) or fails raises LmforgeError.
    """
    try:
        return _compile(template).render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            tools=None,
            documents=None,
            **{role: token for role, token in tokenizer.special_tokens.items() if token is not None},
        )
    except TemplateError as e:
        raise LmforgeError(f"the chat template failed: {e}") from None


def check_messages(messages: Any, where: str) -> list[Message]:
    """``messages``: a list of {role, content} with known roles and string contents, ending with an
    answer; errors name ``where`` (file and line)."""
    if not isinstance(messages, list) or not messages:
        raise LmforgeError(f"{where}: messages must be a non-empty list of {{role, content}}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise LmforgeError(
                f"{where}: messages[{i}] must be {{role: {'|'.join(ROLES)}, content: string}}, got {m!r:.80}"
            )
    if messages[-1]["role"] != "assistant":
        raise LmforgeError(f"{where}: the last message must be the assistant's (the answer to learn)")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def answer_spans(template: str, messages: Sequence[Message], tokenizer: Tokenizer) -> tuple[str, list]:
    """The whole conversation's text and the (start, end) characters of each assistant answer in it."""
    text = render_chat(template, messages, tokenizer, add_generation_prompt=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render_chat(template, messages[:i], tokenizer, add_generation_prompt=True)
        upto = render_chat(template, messages[: i + 1], tokenizer, add_generation_prompt=False)
        if not (upto.startswith(before) and text.startswith(upto)):
            raise LmforgeError(
                "the chat template does not render a conversation's beginning as the beginning of the "
                f"whole (at message {i}): answers cannot be found in its text"
            )
        spans.append((len(before), len(upto.rstrip())))
    return text, spans


def encode_chat(
    template: str, messages: Sequence[Message], tokenizer: Tokenizer
) -> tuple[list[int], list[bool]]:
    """The conversation's token ids and, per token, whether it belongs to an assistant answer."""
    text, spans = answer_spans(template, messages, tokenizer)
    ((ids, offsets),) = tokenizer.encode_offsets([text])
    answer = [any(s < end and start < e for s, e in spans) for start, end in offsets]
    return ids, answer
