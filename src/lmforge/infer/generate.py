"""Autoregressive generation with a KV cache: the closed-batch API over the inference engine.

x_{t+1} ~ p(. | x_<=t): the prompt runs once through the model (prefill) and fills the cache; each
decode step then feeds one new token per sequence and attends over the cached keys and values.
``generate``, ``complete``, ``stream_batch`` and ``decode_steps`` add their prompts to an ``Engine``
(infer/engine.py) and step it until every row is done; with ``num_beams > 1``, ``generate_ids``,
``complete`` and ``generate`` run beam search (infer/beam.py) instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from lmforge.errors import LmforgeError
from lmforge.infer.beam import DecoderStepper, Hypothesis, beam_search
from lmforge.infer.detok import CONTEXT
from lmforge.infer.engine import Engine, StepOutput
from lmforge.infer.sampling import GenerationConfig, SamplingParams
from lmforge.models.gpt import GPT
from lmforge.tokenizer.core import Tokenizer


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (eos or a stop string) or "length"
    prompt_tokens: int


def fit_prompts(prompts: list[list[int]], cfg: GenerationConfig, max_seq_len: int) -> list[list[int]]:
    """Check that prompt + max_new_tokens fits the context window, or cut prompts from the left."""
    if any(len(p) == 0 for p in prompts):
        raise LmforgeError("empty prompt: give at least one token (e.g. the tokenizer's bos token)")
    budget = max_seq_len - cfg.max_new_tokens
    if budget < 1:
        raise LmforgeError(
            f"max_new_tokens={cfg.max_new_tokens} leaves no room in the {max_seq_len}-token context"
        )
    longest = max(len(p) for p in prompts)
    if longest <= budget:
        return prompts
    if cfg.truncate == "left":
        return [p[-budget:] for p in prompts]
    raise LmforgeError(
        f"a prompt of {longest} tokens plus max_new_tokens={cfg.max_new_tokens} exceeds the model's context "
        f"window of {max_seq_len} tokens; shorten it, lower max_new_tokens, "
        "or use truncate='left' (--truncate)"
    )


def decode_steps(
    model: GPT,
    prompts: list[list[int]],
    cfg: GenerationConfig,
    eos_id: int | None = None,
    pad_id: int = 0,
    mode: str = "auto",
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (tokens (B,), finished (B,)) once per step; ``finished`` marks rows done before this step.

    Rows that finished (eos) keep receiving ``pad_id``; the loop ends when all rows are done or after
    ``cfg.max_new_tokens`` steps. Break out of the iterator to stop early.

    mode: how the engine decodes (``Engine``'s modes: eager, static, compiled, graph); "auto" is
    "graph" on CUDA and "eager" elsewhere.
    """
    _refuse_beams(cfg)
    prompts = fit_prompts(prompts, cfg, model.config.max_seq_len)
    return _closed_batch(_token_steps(model, prompts, cfg, eos_id, mode), len(prompts), eos_id, pad_id)


def _refuse_beams(cfg: GenerationConfig) -> None:
    if cfg.num_beams > 1:
        raise LmforgeError(
            f"num_beams={cfg.num_beams}: beam search cannot stream, its tokens are final only when it ends; "
            "use generate, complete or generate_ids"
        )


def _token_steps(
    model: GPT, prompts: list[list[int]], cfg: GenerationConfig, eos_id: int | None, mode: str
) -> Iterator[list[tuple[int, StepOutput]]]:
    params = SamplingParams.from_config(cfg)
    params.stop_token_ids = [] if eos_id is None else [eos_id]
    return _steps(_engine(model, None, prompts, cfg, mode), prompts, params)


def _engine(
    model: GPT, tokenizer: Tokenizer | None, prompts: list[list[int]], cfg: GenerationConfig, mode: str
) -> Engine:
    """An engine sized for this closed batch."""
    if mode == "auto":
        mode = "graph" if model.lm_head.weight.device.type == "cuda" else "eager"
    length = max(map(len, prompts)) + cfg.max_new_tokens
    return Engine(model, tokenizer, max_batch=len(prompts), max_len=length, mode=mode)


def _steps(
    engine: Engine, prompts: list[list[int]], params: SamplingParams
) -> Iterator[list[tuple[int, StepOutput]]]:
    """[(row, output)] per engine step, until every row is done."""
    rows = {engine.add_request(p, params): i for i, p in enumerate(prompts)}
    while engine.has_work():
        yield [(rows[out.request_id], out) for out in engine.step()]


def _closed_batch(
    steps: Iterator[list[tuple[int, StepOutput]]], batch: int, eos_id: int | None, pad_id: int
) -> Iterator[tuple[Tensor, Tensor]]:
    finished = [False] * batch
    for outputs in steps:
        tokens, before = [pad_id] * batch, list(finished)
        for i, out in outputs:
            tokens[i] = out.token_ids[0] if out.token_ids else eos_id
            finished[i] = out.finished and not out.token_ids  # ended by eos
        yield torch.tensor(tokens), torch.tensor(before)


def generate_ids(
    model: GPT, prompts: list[list[int]], cfg: GenerationConfig, eos_id: int | None = None, mode: str = "auto"
) -> list[list[int]]:
    """New token ids for each prompt (eos not included); ``mode`` as in ``decode_steps`` (for the engine:
    beam search runs eagerly)."""
    prompts = fit_prompts(prompts, cfg, model.config.max_seq_len)
    if cfg.num_beams > 1:
        return [h.token_ids for h in _beam_search(model, prompts, cfg, eos_id)]
    new: list[list[int]] = [[] for _ in prompts]
    for outputs in _token_steps(model, prompts, cfg, eos_id if cfg.stop_at_eos else None, mode):
        for row, out in outputs:
            new[row] += out.token_ids
    return new


def _beam_search(
    model: GPT, prompts: list[list[int]], cfg: GenerationConfig, eos_id: int | None
) -> list[Hypothesis]:
    eos_id = eos_id if cfg.stop_at_eos else None
    return beam_search(DecoderStepper(model, prompts, cfg.max_new_tokens), prompts, cfg, eos_id)


def _encode_prompts(tokenizer: Tokenizer, prompts: list[str]) -> list[list[int]]:
    encoded = []
    for text in prompts:
        ids = tokenizer.encode(text)
        if not ids and tokenizer.bos_id is not None:
            ids = [tokenizer.bos_id]
        encoded.append(ids)
    return encoded


def _run_text(
    model: GPT, tokenizer: Tokenizer, encoded: list[list[int]], cfg: GenerationConfig
) -> Iterator[tuple[int, StepOutput]]:
    """(row, output) for every step's output of every row, until all rows are done."""
    engine = _engine(model, tokenizer, encoded, cfg, "auto")
    for outputs in _steps(engine, encoded, SamplingParams.from_config(cfg)):
        yield from outputs


def stream_batch(
    model: GPT, tokenizer: Tokenizer, prompts: list[str], cfg: GenerationConfig | None = None, **kwargs
) -> Iterator[tuple[int, str]]:
    """Yield (row, text delta) as tokens arrive; a stop string ends its row and is not emitted."""
    cfg = cfg or GenerationConfig(**kwargs)
    _refuse_beams(cfg)
    encoded = fit_prompts(_encode_prompts(tokenizer, prompts), cfg, model.config.max_seq_len)
    for row, out in _run_text(model, tokenizer, encoded, cfg):
        if out.text:
            yield row, out.text


def complete(
    model: GPT, tokenizer: Tokenizer, prompts: list[str], cfg: GenerationConfig | None = None, **kwargs
) -> list[Completion]:
    """Complete each prompt; returns text, token ids and why each one stopped."""
    cfg = cfg or GenerationConfig(**kwargs)
    encoded = fit_prompts(_encode_prompts(tokenizer, prompts), cfg, model.config.max_seq_len)
    if cfg.num_beams > 1:
        return _complete_beams(model, tokenizer, encoded, cfg)
    texts: list[list[str]] = [[] for _ in prompts]
    done = [Completion("", [], "length", len(ids)) for ids in encoded]
    for row, out in _run_text(model, tokenizer, encoded, cfg):
        texts[row].append(out.text)
        done[row].token_ids += out.token_ids
        done[row].finish_reason = out.finish_reason or done[row].finish_reason
    for c, parts in zip(done, texts):
        c.text = "".join(parts)
    return done


def _complete_beams(
    model: GPT, tokenizer: Tokenizer, encoded: list[list[int]], cfg: GenerationConfig
) -> list[Completion]:
    """``complete`` by beam search: a hypothesis shorter than max_new_tokens ended with eos."""
    done = []
    for prompt, h in zip(encoded, _beam_search(model, encoded, cfg, tokenizer.eos_id)):
        context = prompt[-CONTEXT:]  # decoded with the new tokens, so the first one reads as mid-text
        text = tokenizer.decode(context + h.token_ids)[len(tokenizer.decode(context)) :]
        reason = "length" if len(h.token_ids) == cfg.max_new_tokens else "stop"
        done.append(Completion(text, h.token_ids, reason, len(prompt)))
    return done


def generate(
    model: GPT, tokenizer: Tokenizer, prompt: str | list[str], cfg: GenerationConfig | None = None, **kwargs
) -> str | list[str]:
    """Continue ``prompt`` (a string or a list of strings); keyword arguments fill a GenerationConfig."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    texts = [c.text for c in complete(model, tokenizer, prompts, cfg, **kwargs)]
    return texts[0] if isinstance(prompt, str) else texts
