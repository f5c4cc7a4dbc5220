"""Autoregressive generation with a KV cache.

x_{t+1} ~ p(. | x_<=t): the prompt runs once through the model (prefill) and fills the cache; each
decode step then feeds one new token per sequence and attends over the cached keys and values.
Prompts of different lengths are left-padded, with an attention mask over the padding and positions
that start at 0 on each sequence's first real token.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from lmforge.errors import LmforgeError
from lmforge.infer.cpu import ENGINES_KEY, packed_for_decode, packing_pays
from lmforge.infer.sampling import GenerationConfig, next_token
from lmforge.models.gpt import GPT
from lmforge.models.layers import KVCache
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


class DecodeEngine:
    """Fixed-shape decoding for a (batch, length) bucket: cache, inputs and outputs never move.

    Each step attends over the whole preallocated cache with a mask (keys at or before the current
    position), so every tensor keeps its shape and address. That lets the step be compiled once and,
    on CUDA, captured in a CUDA graph: a decode step then costs one graph launch instead of hundreds of
    kernel launches from Python. Engines are kept per model and reused across calls.
    """

    def __init__(self, model: GPT, batch: int, max_len: int, compile: bool, cuda_graph: bool):
        device = model.lm_head.weight.device
        self.model = model
        self.cache = model.new_cache(batch, max_len)
        self.key_valid = torch.ones(batch, max_len, dtype=torch.bool, device=device)
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.index = torch.zeros(1, dtype=torch.long, device=device)
        self.fn = torch.compile(self._step, dynamic=False, fullgraph=True) if compile else self._step
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: Tensor | None = None
        self.use_graph = cuda_graph and device.type == "cuda"

    def _step(self) -> Tensor:
        return self.model(
            self.token,
            positions=self.pos,
            key_valid=self.key_valid,
            cache=self.cache,
            cache_index=self.index,
            last_only=True,
        )[:, -1]

    def _capture(self) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up (and compilation) outside the graph
            for _ in range(2):
                self.fn()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self.fn()

    def reset(self, prompt_valid: Tensor) -> KVCache:
        """Start a new call: the prompts' padding mask, an empty cache (for the eager prefill to fill)."""
        self.key_valid.fill_(True)
        self.key_valid[:, : prompt_valid.size(1)] = prompt_valid
        self.cache.length = 0
        return self.cache

    def step(self, token: Tensor, pos: Tensor, t: int) -> Tensor:
        """Logits after feeding ``token`` (B,) at cache slot ``t`` with positions ``pos`` (B, 1)."""
        self.token.copy_(token[:, None])
        self.pos.copy_(pos)
        self.index.fill_(t)
        if not self.use_graph:
            return self.fn()
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.out


BUCKET = 128  # engine lengths are rounded up to this, so nearby lengths share one compiled graph


def get_engine(model: GPT, batch: int, length: int, compile: bool, cuda_graph: bool) -> DecodeEngine:
    max_len = min(-(-length // BUCKET) * BUCKET, model.config.max_seq_len)
    engines = model.__dict__.setdefault(ENGINES_KEY, {})  # dies with the model
    key = (batch, max_len, model.lm_head.weight.dtype, compile, cuda_graph)
    if key not in engines:
        engines[key] = DecodeEngine(model, batch, max_len, compile, cuda_graph)
    return engines[key]


@torch.inference_mode()
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

    mode: "eager" attends over the filled cache prefix (cheapest on CPU, where the linear layers run on
    oneDNN-packed weights when that pays, see ``infer/cpu.py``); "static" uses a fixed-shape
    DecodeEngine; "compiled" also compiles its step; "graph" compiles and replays it as a CUDA graph.
    "auto" is "graph" on CUDA and "eager" elsewhere.
    """
    prompts = fit_prompts(prompts, cfg, model.config.max_seq_len)
    device = model.lm_head.weight.device
    if mode == "auto":
        mode = "graph" if device.type == "cuda" else "eager"
    if mode not in ("eager", "static", "compiled", "graph"):
        raise LmforgeError(f"unknown decode mode {mode!r}; expected auto, eager, static, compiled or graph")
    b, p_len = len(prompts), max(len(p) for p in prompts)
    total = p_len + cfg.max_new_tokens
    history = torch.full((b, total), pad_id, dtype=torch.long)
    key_valid = torch.ones((b, total), dtype=torch.bool)
    for i, p in enumerate(prompts):
        history[i, p_len - len(p) : p_len] = torch.tensor(p, dtype=torch.long)
        history[i, : p_len - len(p)] = p[0]  # padding repeats a real token: the penalty's set is unchanged
        key_valid[i, : p_len - len(p)] = False
    history, key_valid = history.to(device), key_valid.to(device)
    padded = not bool(key_valid[:, :p_len].all())
    positions = (key_valid[:, :p_len].cumsum(dim=1) - 1).clamp(min=0)
    generator = None
    if cfg.seed is not None and not cfg.greedy:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)

    if mode == "eager":
        cache = model.new_cache(b, total)
        if packing_pays(model, b):
            model = packed_for_decode(model, b)

        def step(token: Tensor, pos: Tensor, t: int) -> Tensor:
            kv = key_valid[:, : t + 1] if padded else None
            return model(token[:, None], positions=pos, key_valid=kv, cache=cache, last_only=True)[:, -1]

    else:
        engine = get_engine(model, b, total, compile=mode != "static", cuda_graph=mode == "graph")
        cache, step = engine.reset(key_valid[:, :p_len]), engine.step
    # Prefill: the prompts run once, eagerly, and fill the cache.
    kv = key_valid[:, :p_len] if padded else None
    logits = model(history[:, :p_len], positions=positions, key_valid=kv, cache=cache, last_only=True)[:, -1]

    pos = positions[:, -1:]
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    use_eos = eos_id is not None
    # Asking "are all rows done?" waits for the device; on a GPU ask every few steps only.
    check_every = 1 if device.type == "cpu" else 8
    for i in range(cfg.max_new_tokens):
        t = p_len + i
        token = next_token(logits, cfg, history[:, :t], generator)
        if use_eos:
            token = torch.where(finished, torch.full_like(token, pad_id), token)
        yield token, finished
        if use_eos:
            finished = finished | (token == eos_id)
            if i % check_every == check_every - 1 and bool(finished.all()):
                return
        if i == cfg.max_new_tokens - 1:
            return
        history[:, t] = token
        pos = pos + 1
        logits = step(token, pos, t)


def generate_ids(
    model: GPT, prompts: list[list[int]], cfg: GenerationConfig, eos_id: int | None = None, mode: str = "auto"
) -> list[list[int]]:
    """New token ids for each prompt (eos not included); ``mode`` as in ``decode_steps``."""
    eos = eos_id if cfg.stop_at_eos else None
    steps = list(decode_steps(model, prompts, cfg, eos, mode=mode))  # stays on the device: no per-step sync
    tokens = torch.stack([tok for tok, _ in steps], dim=1).tolist()
    done = torch.stack([fin for _, fin in steps], dim=1).tolist()
    return [
        [tok for tok, d in zip(row, row_done) if not d and tok != eos] for row, row_done in zip(tokens, done)
    ]


class _TextTracker:
    """One row's new tokens, decoded incrementally: finds stop strings and hands out clean text deltas."""

    def __init__(self, tokenizer: Tokenizer, stop: list[str]):
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.emitted = ""
        self.finish_reason: str | None = None

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        cut = min((text.find(s) for s in self.stop if s in text), default=-1)
        if cut >= 0:
            self.finish_reason = "stop"
            return self._emit(text[:cut])
        # Hold back a tail that may grow into a stop string, and an incomplete UTF-8 character.
        hold = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        return self._emit(text[: len(text) - hold].rstrip("\ufffd"))

    def flush(self) -> str:
        return "" if self.finish_reason == "stop" else self._emit(self.tokenizer.decode(self.ids))

    def _emit(self, visible: str) -> str:
        if not visible.startswith(self.emitted):  # an earlier character changed on decoding: wait
            return ""
        delta, self.emitted = visible[len(self.emitted) :], visible
        return delta


def _encode_prompts(tokenizer: Tokenizer, prompts: list[str]) -> list[list[int]]:
    encoded = []
    for text in prompts:
        ids = tokenizer.encode(text)
        if not ids and tokenizer.bos_id is not None:
            ids = [tokenizer.bos_id]
        encoded.append(ids)
    return encoded


def _run_text(
    model: GPT,
    tokenizer: Tokenizer,
    encoded: list[list[int]],
    cfg: GenerationConfig,
    trackers: list[_TextTracker],
) -> Iterator[tuple[int, str]]:
    eos = tokenizer.eos_id if cfg.stop_at_eos else None
    for tokens, finished in decode_steps(model, encoded, cfg, eos):
        for i, (tok, done) in enumerate(zip(tokens.tolist(), finished.tolist())):
            tr = trackers[i]
            if done or tr.finish_reason:
                continue
            if tok == eos:
                tr.finish_reason = "stop"
                continue
            delta = tr.add(tok)
            if delta:
                yield i, delta
        if all(tr.finish_reason for tr in trackers):
            break
    for i, tr in enumerate(trackers):
        delta = tr.flush()
        tr.finish_reason = tr.finish_reason or "length"
        if delta:
            yield i, delta


def stream_batch(
    model: GPT, tokenizer: Tokenizer, prompts: list[str], cfg: GenerationConfig | None = None, **kwargs
) -> Iterator[tuple[int, str]]:
    """Yield (row, text delta) as tokens arrive; a stop string ends its row and is not emitted."""
    cfg = cfg or GenerationConfig(**kwargs)
    trackers = [_TextTracker(tokenizer, cfg.stop) for _ in prompts]
    yield from _run_text(model, tokenizer, _encode_prompts(tokenizer, prompts), cfg, trackers)


def complete(
    model: GPT, tokenizer: Tokenizer, prompts: list[str], cfg: GenerationConfig | None = None, **kwargs
) -> list[Completion]:
    """Complete each prompt; returns text, token ids and why each one stopped."""
    cfg = cfg or GenerationConfig(**kwargs)
    encoded = _encode_prompts(tokenizer, prompts)
    trackers = [_TextTracker(tokenizer, cfg.stop) for _ in prompts]
    for _ in _run_text(model, tokenizer, encoded, cfg, trackers):
        pass
    return [
        Completion(text=tr.emitted, token_ids=tr.ids, finish_reason=tr.finish_reason, prompt_tokens=len(ids))
        for tr, ids in zip(trackers, encoded)
    ]


def generate(
    model: GPT, tokenizer: Tokenizer, prompt: str | list[str], cfg: GenerationConfig | None = None, **kwargs
) -> str | list[str]:
    """Continue ``prompt`` (a string or a list of strings); keyword arguments fill a GenerationConfig."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    texts = [c.text for c in complete(model, tokenizer, prompts, cfg, **kwargs)]
    return texts[0] if isinstance(prompt, str) else texts
