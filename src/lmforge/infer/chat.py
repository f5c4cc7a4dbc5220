"""A conversation with a decoder: the history rendered by its chat template, answers streamed.

Each turn renders the whole history with the assistant's turn opened (``tokenizer/chat.py``, the
rendering the server's /v1/chat/completions uses) and generates until the end-of-turn token, at most
``max_new_tokens`` and at most half the context. When the
prompt and ``max_new_tokens`` outgrow the context, the oldest exchanges (a user message and its answer)
are dropped, never the system message nor the newest question.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

from lmforge.errors import LmforgeError
from lmforge.infer.generate import stream_batch
from lmforge.infer.sampling import GenerationConfig
from lmforge.models.gpt import GPT
from lmforge.tokenizer.chat import Message, render_chat, template_of
from lmforge.tokenizer.core import Tokenizer


class ChatSession:
    """The history of one conversation and the model that answers in it."""

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        cfg: GenerationConfig,
        system: str = "",
        template: str | None = None,
    ):
        if cfg.num_beams > 1:
            raise LmforgeError("chat streams its answers: use num_beams=1")
        self.model, self.tokenizer, self.cfg = model, tokenizer, copy.copy(cfg)
        # An answer gets at most half the context, so that a question always has room.
        self.cfg.max_new_tokens = min(cfg.max_new_tokens, model.config.max_seq_len // 2)
        self.template = template_of(tokenizer, template)
        self.system = system  # "": none (the template may add its own default)
        self.turns: list[Message] = []  # user and assistant messages, alternating

    def messages(self, turns: list[Message] | None = None) -> list[Message]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, *(self.turns if turns is None else turns)]

    def reset(self) -> None:
        self.turns = []

    def prompt(self) -> str:
        """The history as a prompt that fits the context with ``max_new_tokens`` to spare, the oldest
        exchanges dropped as needed (for good: they would not fit next time either). When even the
        newest message alone does not fit, LmforgeError, and the history stays as it was."""
        budget = self.model.config.max_seq_len - self.cfg.max_new_tokens
        turns = list(self.turns)
        while True:
            text = render_chat(self.template, self.messages(turns), self.tokenizer)
            tokens = len(self.tokenizer.encode(text))
            if tokens <= budget:
                self.turns = turns
                return text
            if len(turns) < 3:
                raise LmforgeError(
                    f"the message needs {tokens} tokens with the history's system message and template; "
                    f"the context holds {budget} besides max_new_tokens={self.cfg.max_new_tokens}: "
                    "send a shorter one, or lower max_new_tokens"
                )
            del turns[:2]

    def send(self, text: str) -> Iterator[str]:
        """The answer to ``text``, as text deltas while it is generated; the answer joins the history
        (also a partial one, when the caller stops early)."""
        self.turns.append({"role": "user", "content": text})
        try:
            prompt = self.prompt()
        except LmforgeError:
            self.turns.pop()
            raise
        parts: list[str] = []
        try:
            for _, delta in stream_batch(self.model, self.tokenizer, [prompt], self.cfg):
                parts.append(delta)
                yield delta
        finally:
            self.turns.append({"role": "assistant", "content": "".join(parts)})

    def reply(self, text: str) -> str:
        """The whole answer to ``text``."""
        return "".join(self.send(text))
