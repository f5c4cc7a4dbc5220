"""``/v1/completions`` and ``/v1/chat/completions``: a request becomes one engine job (a request per
prompt and choice), and the job's outputs become OpenAI's response, or its stream of chunks."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lmforge.config import ConfigError
from lmforge.errors import LmforgeError
from lmforge.infer.engine import StepOutput, TokenLogprob
from lmforge.infer.sampling import SamplingParams
from lmforge.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest
from lmforge.serve.runner import Job, Overloaded, RequestTimeout, Unavailable
from lmforge.tokenizer.chat import render_chat

if TYPE_CHECKING:
    from lmforge.serve.app import Server
    from lmforge.serve.protocol import _Sampling


def api_error(e: Exception) -> APIError:
    """The HTTP error for what the runner or the engine raised."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, Overloaded):
        return APIError(429, str(e), "rate_limit_error", code="queue_full", headers={"Retry-After": "1"})
    if isinstance(e, RequestTimeout):
        return APIError(504, str(e), "timeout_error", code="timeout")
    if isinstance(e, Unavailable):
        return APIError(503, str(e), "service_unavailable", code="unavailable")
    if isinstance(e, LmforgeError):
        return APIError(400, str(e))
    raise e


@dataclass
class Choice:
    """One choice's output so far."""

    parts: list[str] = field(default_factory=list)
    tokens: int = 0
    offset: int = 0  # characters of text so far (for logprobs' text_offset)
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)

    def add(self, out: StepOutput) -> list[TokenLogprob]:
        """Take in one step's output; returns its logprobs (of output tokens: not of eos)."""
        entries = (out.logprobs or [])[: len(out.token_ids)]
        self.parts.append(out.text)
        self.tokens += len(out.token_ids)
        self.logprobs += entries
        if out.finished:
            self.finish_reason = out.finish_reason
        return entries


@dataclass
class Plan:
    """What one request asks of the engine, and what its response repeats."""

    prompts: list[list[int]]
    n: int
    jobs: list[tuple[list[int], SamplingParams]]  # choice i is prompt i // n
    echo: list[str] = field(default_factory=list)  # prompt texts, when echoed

    def usage(self, choices: list[Choice]) -> dict[str, int]:
        prompt, completion = sum(map(len, self.prompts)), sum(c.tokens for c in choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def check_model(server: Server, name: str | None) -> None:
    if name is not None and name != server.name:
        raise APIError(
            404,
            f"the model `{name}` does not exist; this server serves `{server.name}`",
            param="model",
            code="model_not_found",
        )


def plan(
    server: Server, body: _Sampling, prompts: list[list[int]], max_tokens: int | None, logprobs: int | None
) -> Plan:
    """Check the request against the context and the server's limits; one SamplingParams per choice.

    ``max_tokens`` None: the rest of the context after the longest prompt.
    """
    longest, context = max(map(len, prompts)), server.max_len
    if longest >= context:
        raise APIError(
            400,
            f"the prompt has {longest} tokens; the context of {context} tokens must also hold the output",
            param="prompt" if isinstance(body, CompletionRequest) else "messages",
            code="context_length_exceeded",
        )
    if max_tokens is None:
        max_tokens = context - longest
    elif longest + max_tokens > context:
        raise APIError(
            400,
            f"max_tokens={max_tokens} plus the prompt's {longest} tokens exceeds the context of {context} "
            f"tokens; ask for at most {context - longest}",
            param="max_tokens",
            code="context_length_exceeded",
        )
    if body.n > server.settings.max_n:
        raise APIError(400, f"n={body.n} is more than this server's max_n={server.settings.max_n}", param="n")
    if len(prompts) * body.n > server.runner.capacity:
        raise APIError(
            400,
            f"{len(prompts)} prompts x n={body.n} need {len(prompts) * body.n} slots; this server takes "
            f"{server.runner.capacity} requests at once",
            param="n",
        )
    jobs = []
    for prompt in prompts:
        for j in range(body.n):
            seed = None if body.seed is None else (body.seed + j) % 2**64  # n seeded choices differ
            try:
                params = SamplingParams(
                    max_tokens=max_tokens,
                    temperature=body.temperature,
                    top_k=max(body.top_k, 0),
                    top_p=body.top_p,
                    repetition_penalty=body.repetition_penalty,
                    presence_penalty=body.presence_penalty,
                    frequency_penalty=body.frequency_penalty,
                    seed=seed,
                    stop=body.stop_list,
                    ignore_eos=body.ignore_eos,
                    logprobs=logprobs,
                )
            except ConfigError as e:
                raise APIError(400, str(e)) from None
            jobs.append((prompt, params))
    return Plan(prompts, body.n, jobs)


def completion_plan(server: Server, body: CompletionRequest) -> Plan:
    """Prompts as token ids: a string, strings, a list of ids, or lists of ids."""
    check_model(server, body.model)
    if body.echo and body.logprobs is not None:
        raise APIError(
            400, "echo with logprobs is not supported (it needs the prompt's logprobs)", param="echo"
        )
    raw = body.prompt
    if not raw:
        raise APIError(400, "prompt must not be empty", param="prompt")
    single = isinstance(raw, str) or isinstance(raw[0], int)
    items: list[Any] = [raw] if single else list(raw)
    prompts, vocab = [], server.tokenizer.vocab_size
    for item in items:
        ids = server.tokenizer.encode(item) if isinstance(item, str) else list(item)
        if not ids and isinstance(item, str) and server.tokenizer.bos_id is not None:
            ids = [server.tokenizer.bos_id]
        if not ids:
            raise APIError(400, "prompt must not be empty", param="prompt")
        if not all(0 <= t < vocab for t in ids):
            raise APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
        prompts.append(ids)
    result = plan(server, body, prompts, body.max_tokens, body.logprobs)
    if body.echo:
        result.echo = [it if isinstance(it, str) else server.tokenizer.decode(it) for it in items]
    return result


def chat_plan(server: Server, body: ChatCompletionRequest) -> Plan:
    """The messages rendered by the model's chat template, with the assistant's turn opened."""
    check_model(server, body.model)
    if server.chat_template is None:
        raise APIError(
            400,
            f"the model `{server.name}` has no chat template (no chat_template in its "
            "tokenizer_config.json); use /v1/completions, or start the server with --chat-template FILE",
            param="messages",
            code="no_chat_template",
        )
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
    messages = [
        {"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})} for m in body.messages
    ]
    try:
        text = render_chat(server.chat_template, messages, server.tokenizer)
    except LmforgeError as e:
        raise APIError(400, str(e), param="messages") from None
    ids = server.tokenizer.encode(text)
    if not ids:
        raise APIError(400, "the chat template rendered an empty prompt", param="messages")
    max_tokens = body.max_completion_tokens or body.max_tokens
    return plan(server, body, [ids], max_tokens, (body.top_logprobs or 0) if body.logprobs else None)


def _token(server: Server, token_id: int) -> str:
    return server.tokenizer.decode([token_id])


def completion_logprobs(server: Server, entries: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """OpenAI's legacy completion logprobs: tokens, their logprobs, top alternatives, text offsets."""
    tokens = [_token(server, e.token_id) for e in entries]
    return {
        "tokens": tokens,
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{_token(server, t): lp for t, lp in e.top} for e in entries],
        "text_offset": list(itertools.accumulate((len(t) for t in tokens[:-1]), initial=offset)),
    }


def chat_logprobs(server: Server, entries: list[TokenLogprob]) -> dict[str, Any]:
    def item(token_id: int, logprob: float) -> dict[str, Any]:
        text = _token(server, token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {
        "content": [
            {**item(e.token_id, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]} for e in entries
        ]
    }


def head(kind: str, server: Server) -> dict[str, Any]:
    prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": server.name,
    }


async def collect(server: Server, job: Job, plan: Plan) -> list[Choice]:
    choices = [Choice() for _ in plan.jobs]
    async for index, out in server.runner.outputs(job, server.settings.timeout):
        choices[index].add(out)
    return choices


def completion_response(server: Server, plan: Plan, choices: list[Choice], logprobs: bool) -> dict:
    rows = []
    for i, c in enumerate(choices):
        text = (plan.echo[i // plan.n] if plan.echo else "") + "".join(c.parts)
        lp = completion_logprobs(server, c.logprobs, 0) if logprobs else None
        rows.append({"index": i, "text": text, "logprobs": lp, "finish_reason": c.finish_reason})
    return {**head("text_completion", server), "choices": rows, "usage": plan.usage(choices)}


def chat_response(server: Server, plan: Plan, choices: list[Choice], logprobs: bool) -> dict:
    rows = [
        {
            "index": i,
            "message": {"role": "assistant", "content": "".join(c.parts)},
            "logprobs": chat_logprobs(server, c.logprobs) if logprobs else None,
            "finish_reason": c.finish_reason,
        }
        for i, c in enumerate(choices)
    ]
    return {**head("chat.completion", server), "choices": rows, "usage": plan.usage(choices)}


async def completion_chunks(
    server: Server, job: Job, plan: Plan, logprobs: bool, include_usage: bool
) -> AsyncIterator[dict]:
    base = {**head("text_completion", server), **({"usage": None} if include_usage else {})}
    choices = [Choice() for _ in plan.jobs]

    def chunk(index: int, text: str, lp: dict | None, finish: str | None) -> dict:
        return {**base, "choices": [{"index": index, "text": text, "logprobs": lp, "finish_reason": finish}]}

    for i in range(len(choices) if plan.echo else 0):
        yield chunk(i, plan.echo[i // plan.n], None, None)
    async for index, out in server.runner.outputs(job, server.settings.timeout):
        c = choices[index]
        offset = c.offset
        entries = c.add(out)
        c.offset += len(out.text)
        if out.text or out.finished or (logprobs and entries):
            lp = completion_logprobs(server, entries, offset) if logprobs else None
            yield chunk(index, out.text, lp, c.finish_reason)
    if include_usage:
        yield {**base, "choices": [], "usage": plan.usage(choices)}


async def chat_chunks(
    server: Server, job: Job, plan: Plan, logprobs: bool, include_usage: bool
) -> AsyncIterator[dict]:
    base = {**head("chat.completion.chunk", server), **({"usage": None} if include_usage else {})}
    choices = [Choice() for _ in plan.jobs]

    def chunk(index: int, delta: dict, lp: dict | None, finish: str | None) -> dict:
        return {
            **base,
            "choices": [{"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}],
        }

    for i in range(len(choices)):
        yield chunk(i, {"role": "assistant", "content": ""}, None, None)
    async for index, out in server.runner.outputs(job, server.settings.timeout):
        entries = choices[index].add(out)
        if out.text or out.finished or (logprobs and entries):
            delta = {"content": out.text} if out.text else {}
            lp = chat_logprobs(server, entries) if logprobs else None
            yield chunk(index, delta, lp, choices[index].finish_reason)
    if include_usage:
        yield {**base, "choices": [], "usage": plan.usage(choices)}


async def sse(events: AsyncIterator[dict]) -> AsyncIterator[str]:
    """Server-sent events as OpenAI sends them; an error after the stream began becomes an error event."""
    try:
        async for event in events:
            yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
    except (LmforgeError, Unavailable, RequestTimeout) as e:
        yield f"data: {json.dumps(api_error(e).body(), ensure_ascii=False)}\n\n"
    yield "data: [DONE]\n\n"
