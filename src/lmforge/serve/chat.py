"""Chat messages as prompt text, through the model's own chat template (Jinja), as transformers'
``apply_chat_template`` renders it: the same sandbox, filters and variables, so a template written
for Hugging Face gives the prompt the model was trained on."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lmforge.errors import LmforgeError
from lmforge.tokenizer.core import Tokenizer


def read_chat_template(model_dir: str | Path) -> str | None:
    """The folder's chat template: ``chat_template.jinja``, else ``chat_template`` in
    ``tokenizer_config.json`` (a string, or a list of named templates: the one named "default")."""
    d = Path(model_dir)
    if (d / "chat_template.jinja").is_file():
        return (d / "chat_template.jinja").read_text(encoding="utf-8")
    path = d / "tokenizer_config.json"
    if not path.is_file():
        return None
    template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


def _raise(message: str) -> None:
    raise TemplateError(message)


@lru_cache(maxsize=4)
def _compile(template: str) -> Any:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def render_chat(template: str, messages: list[dict[str, Any]], tokenizer: Tokenizer) -> str:
    """The prompt for ``messages`` with the assistant's turn opened (add_generation_prompt=True).

    A template that rejects the conversation (``raise_exception``) or fails raises LmforgeError.
    """
    try:
        return _compile(template).render(
            messages=messages,
            add_generation_prompt=True,
            tools=None,
            documents=None,
            **{role: token for role, token in tokenizer.special_tokens.items() if token is not None},
        )
    except TemplateError as e:
        raise LmforgeError(f"the chat template failed: {e}") from None
