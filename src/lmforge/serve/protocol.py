"""The OpenAI request bodies the server accepts, and its error JSON.

Known fields are validated strictly (a string is not a number) and against OpenAI's ranges, so a bad
request fails with a 400 naming the field. Unknown fields are ignored and logged, as vLLM does: clients
built for other servers send extras (its users asked for that).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

log = logging.getLogger("lmforge.serve")

TOP_LOGPROBS = 20  # the most alternatives a request may ask for


class APIError(Exception):
    """A request that fails with ``status`` and OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    """The fields completions and chat share."""

    model: str | None = None  # None: the served model
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=-1)  # vLLM's extension; 0 and -1: off
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)  # what torch's generators take
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: float = Field(1.0, gt=0)  # vLLM's extension
    ignore_eos: bool = False  # vLLM's extension: run to max_tokens (benchmarks)
    user: str | None = None

    @model_validator(mode="after")
    def _stops(self) -> _Sampling:
        if self.stop is not None and any(s == "" for s in self.stop_list):
            raise ValueError("stop strings must not be empty")
        return self

    @property
    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=TOP_LOGPROBS)
    echo: bool = False


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)  # None: the rest of the context
    max_completion_tokens: int | None = Field(None, ge=1)  # OpenAI's newer name for max_tokens
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=TOP_LOGPROBS)


Request = TypeVar("Request", bound=BaseModel)

_UNION_TAG = re.compile(r"^(str|int|float|bool|list\[.*\]|[A-Z]\w*|function-.*)$")


def _param(loc: tuple[int | str, ...]) -> str | None:
    """``messages.0.content`` from pydantic's location, without the union member it tried (``str``)."""
    parts = []
    for part in loc:
        if isinstance(part, str) and _UNION_TAG.match(part):
            break
        parts.append(str(part))
    return ".".join(parts) or None


def parse_body(raw: bytes, cls: type[Request]) -> Request:
    """``cls`` from a request body; malformed JSON, wrong types and out-of-range values raise APIError."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(cls.model_fields))
    if unknown:
        log.warning("ignoring fields this server does not know: %s", ", ".join(unknown))
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        param = _param(first["loc"])
        raise APIError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param) from None
