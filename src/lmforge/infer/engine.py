"""A token-level inference engine with continuous batching: requests join and leave at every step.

The KV cache is a slot pool: ``max_batch`` rows of ``max_len`` positions, allocated once, one row per
running request, each with its own length. Paged blocks (vLLM) share memory between requests of very
different lengths, but need a block table and a paged attention kernel that plain PyTorch lacks; at
the batch sizes and context lengths of a CPU or a single GPU, a request's worst case (prompt +
max_tokens <= max_len) fits a row, and rows keep attention a dense SDPA call over a view of the pool.

Running requests always hold rows 0..n-1: when one finishes (or is aborted) the last row moves into
its slot (one copy of its cached keys and values), so the slot is free at once and every forward runs
on a contiguous view of n rows, never on idle ones. A step decodes one token for every running row
(each writes its key and value at its own length; a mask hides the rest), then admits waiting requests
into the free rows and prefills them in one right-padded forward: their first tokens come out in the
same step, and they decode with the others from the next one.

One thread owns the engine (the model is not thread-safe): a server calls ``add_request``, ``abort``
and ``step`` from its engine thread and hands the outputs to its clients.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lmforge.errors import LmforgeError
from lmforge.infer.cpu import ENGINES_KEY, Int8Decoder, int8_decoder, packed_for_decode, packing_rows
from lmforge.infer.detok import CONTEXT, TextTracker
from lmforge.infer.sampling import SamplingParams, sample_rows
from lmforge.models.gpt import GPT
from lmforge.models.layers import KVCache
from lmforge.tokenizer.core import Tokenizer


@dataclass
class TokenLogprob:
    """log p of a chosen token under the model (before penalties and temperature), and the top ones."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class StepOutput:
    """What one step produced for one request."""

    request_id: int
    token_ids: list[int]  # the new token (none when it was eos or a stop id: those are left out)
    finished: bool
    finish_reason: str | None  # "stop" (eos, stop id or stop string) or "length" (max_tokens)
    text: str = ""  # the new text (with a tokenizer); a stop string and what follows are left out
    logprobs: list[TokenLogprob] | None = None


@dataclass
class _Request:
    id: int
    prompt: list[int]
    params: SamplingParams
    stop_ids: frozenset[int]
    generator: torch.Generator | None
    text: TextTracker | None
    slot: int = -1
    length: int = 0  # tokens in its cache row
    last: int = -1  # the token to feed next
    generated: int = 0

    @property
    def penalized(self) -> bool:
        """Whether its sampling reads the engine's ``seen`` and ``counts`` rows (kept for it alone)."""
        p = self.params
        return p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0


class SlotCache(KVCache):
    """The pool's keys and values; ``bind`` says which rows the next forward writes, and where.

    Rows ``rows`` write their t new keys at positions span - t.. (``start`` None: all rows alike), or
    each row one key at its own position ``start`` (B,); attention sees the first ``span`` positions
    and the caller's ``key_valid`` hides each row's unwritten ones.
    """

    def bind(self, rows: slice, span: int, start: Tensor | None = None) -> None:
        self.rows, self.span, self.start = rows, span, start

    def reserve(self, t: int) -> int:
        return self.span - t  # the causal offset: new queries are the last t of the span keys

    def update(self, layer: int, k: Tensor, v: Tensor, index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        keys, values = self.k[layer, self.rows], self.v[layer, self.rows]
        if self.start is None:
            keys[:, :, self.span - k.size(2) : self.span] = k
            values[:, :, self.span - k.size(2) : self.span] = v
        else:
            rows = torch.arange(k.size(0), device=k.device)
            keys[rows, :, self.start] = k[:, :, 0]
            values[rows, :, self.start] = v[:, :, 0]
        return keys[:, :, : self.span], values[:, :, : self.span]

    def move(self, src: int, dst: int, length: int) -> None:
        self.k[:, dst, :, :length] = self.k[:, src, :, :length]
        self.v[:, dst, :, :length] = self.v[:, src, :, :length]


class FixedStep:
    """A decode step over all rows of a pool at fixed shapes, for ``torch.compile`` and CUDA graphs.

    Every row writes its key at its own length and attends over the whole pool through a mask, so no
    tensor changes shape or address between steps; idle rows decode garbage that nobody reads. On CUDA
    the step is captured once and replayed: one graph launch per token instead of hundreds of kernel
    launches from Python. Compiling and capturing take seconds, so steps are kept per model and reused.
    """

    def __init__(self, model: GPT, batch: int, max_len: int, compile: bool, cuda_graph: bool):
        c, weight = model.config, model.lm_head.weight
        self.model = model
        self.cache = SlotCache(
            c.n_layer, batch, c.n_kv_head, max_len, c.head_dim, weight.dtype, weight.device
        )
        self.tokens = torch.zeros(batch, 1, dtype=torch.long, device=weight.device)
        self.lengths = torch.zeros(batch, dtype=torch.long, device=weight.device)
        self.fn = torch.compile(self._step, dynamic=False, fullgraph=True) if compile else self._step
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: Tensor | None = None
        self.use_graph = cuda_graph and weight.device.type == "cuda"

    def _step(self) -> Tensor:
        key_valid = torch.arange(self.cache.max_len, device=self.lengths.device) <= self.lengths[:, None]
        positions = self.lengths[:, None]
        return self.model(
            self.tokens, positions=positions, key_valid=key_valid, cache=self.cache, last_only=True
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

    def __call__(self, tokens: list[int], lengths: list[int]) -> Tensor:
        """Logits (n, V) of rows 0..n-1 fed ``tokens`` at positions ``lengths``."""
        n = len(tokens)
        self.tokens.zero_()
        self.lengths.zero_()
        self.tokens[:n, 0] = torch.tensor(tokens)
        self.lengths[:n] = torch.tensor(lengths)
        self.cache.bind(slice(0, self.tokens.size(0)), self.cache.max_len, self.lengths)
        if not self.use_graph:
            return self.fn()[:n]
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.out[:n]


BUCKET = 128  # fixed-step lengths are rounded up to this, so nearby lengths share one compiled graph


def fixed_step(model: GPT, batch: int, length: int, compile: bool, cuda_graph: bool) -> FixedStep:
    """The model's fixed-shape step for this batch and (bucketed) length, built on first use.

    Its cache is shared by every engine that gets it: run one such engine at a time per model.
    """
    max_len = min(-(-length // BUCKET) * BUCKET, model.config.max_seq_len)
    steps = model.__dict__.setdefault(ENGINES_KEY, {})  # dies with the model
    key = (batch, max_len, model.lm_head.weight.dtype, compile, cuda_graph)
    if key not in steps:
        steps[key] = FixedStep(model, batch, max_len, compile, cuda_graph)
    return steps[key]


MODES = ("eager", "static", "compiled", "graph")


class Engine:
    """Continuous batching over token ids: ``add_request``, then ``step`` until ``has_work`` is False.

    With a ``tokenizer`` each output carries its text delta (incremental, stop strings applied) and
    the tokenizer's eos ends a request; without one, requests stop at their stop ids and max_tokens.

    mode: how decode steps run. "eager" attends over each row's filled cache prefix (cheapest on CPU,
    where the linear layers run on oneDNN-packed weights when that pays, see ``infer/cpu.py``);
    "static" runs a ``FixedStep``, "compiled" compiles it, "graph" also replays it as a CUDA graph.
    """

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer | None = None,
        max_batch: int = 8,
        max_len: int | None = None,
        mode: str = "eager",
    ):
        if mode not in MODES:
            raise LmforgeError(f"unknown decode mode {mode!r}; expected one of {', '.join(MODES)}")
        c = model.config
        self.model, self.tokenizer, self.max_batch = model, tokenizer, max_batch
        self.max_len = min(max_len or c.max_seq_len, c.max_seq_len)
        weight = model.lm_head.weight
        self.device = weight.device
        self.fixed: FixedStep | None = None
        if mode == "eager":
            self.cache = SlotCache(
                c.n_layer, max_batch, c.n_kv_head, self.max_len, c.head_dim, weight.dtype, self.device
            )
        else:
            self.fixed = fixed_step(model, max_batch, self.max_len, mode != "static", mode == "graph")
            self.cache = self.fixed.cache
        self.seen = torch.zeros(max_batch, c.vocab_size, dtype=torch.bool, device=self.device)
        self.counts = torch.zeros(max_batch, c.vocab_size, device=self.device)
        self.packed: GPT | None = None  # the model's packed CPU copy, chosen when the engine gets busy
        self.native: Int8Decoder | None = None  # an int8 model's decode step in C, chosen likewise
        self.pack_from = 0  # ... and used for forwards of at least this many rows
        self.running: list[_Request] = []  # running[i] holds slot i
        self.waiting: deque[_Request] = deque()
        self._ids = itertools.count()

    def add_request(self, prompt_ids: Sequence[int], params: SamplingParams | None = None) -> int:
        """Queue a request; it starts at the next ``step`` with a free slot. Returns its id."""
        params = params or SamplingParams()
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise LmforgeError("empty prompt: give at least one token (e.g. the tokenizer's bos token)")
        if len(prompt) + params.max_tokens > self.max_len:
            raise LmforgeError(
                f"a prompt of {len(prompt)} tokens plus max_tokens={params.max_tokens} exceeds the "
                f"context of {self.max_len} tokens; shorten the prompt or lower max_tokens"
            )
        if params.stop and self.tokenizer is None:
            raise LmforgeError("stop strings need an engine with a tokenizer")
        vocab = self.model.config.vocab_size
        if not all(0 <= t < vocab for t in prompt):
            raise LmforgeError(f"prompt token ids must be in [0, {vocab})")
        stop_ids = set(params.stop_token_ids)
        if self.tokenizer is not None and self.tokenizer.eos_id is not None and not params.ignore_eos:
            stop_ids.add(self.tokenizer.eos_id)
        generator = None
        if not params.greedy:  # unseeded: a seed from torch's global generator (torch.manual_seed)
            seed = params.seed if params.seed is not None else int(torch.randint(2**62, ()))
            generator = torch.Generator(device=self.device).manual_seed(seed)
        text = None
        if self.tokenizer is not None:
            text = TextTracker(self.tokenizer, params.stop, prompt[-CONTEXT:])
        request = _Request(next(self._ids), prompt, params, frozenset(stop_ids), generator, text)
        self.waiting.append(request)
        return request.id

    def abort(self, request_id: int) -> bool:
        """Drop a request, queued or running (its slot is free at once); False if it is not here."""
        for r in self.waiting:
            if r.id == request_id:
                self.waiting.remove(r)
                return True
        for r in self.running:
            if r.id == request_id:
                self._release(r)
                return True
        return False

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    @torch.inference_mode()
    def step(self) -> list[StepOutput]:
        """Decode one token for every running request, then admit and prefill waiting ones."""
        if not self.running:  # idle until now: the weights may have changed (training, loading)
            rows = None if self.fixed is not None else packing_rows(self.model)
            pays = rows is not None and rows <= self.max_batch
            self.packed = packed_for_decode(self.model, self.max_batch) if pays else None
            self.pack_from = rows or 0
            self.native = None if self.fixed is not None else int8_decoder(self.model, self.cache)
        outputs = []
        if self.running:
            outputs += self._advance(self.running, self._decode())
        admitted = []
        while self.waiting and len(self.running) < self.max_batch:
            request = self.waiting.popleft()
            request.slot = len(self.running)
            self.running.append(request)
            admitted.append(request)
        if admitted:
            outputs += self._advance(admitted, self._prefill(admitted))
        return outputs

    def _decoder(self, rows: int) -> GPT:
        """The model for a forward of ``rows`` token rows: the packed copy where it is the faster."""
        return self.packed if self.packed is not None and rows >= self.pack_from else self.model

    def _decode(self) -> Tensor:
        """Logits after feeding every running row its last token at its own position."""
        tokens, lengths = [r.last for r in self.running], [r.length for r in self.running]
        for r in self.running:
            r.length += 1
        if self.fixed is not None:
            return self.fixed(tokens, lengths)
        if self.native is not None:
            logits = self.native(tokens, lengths, self.cache)
            if logits is not None:
                return logits
        span = max(lengths) + 1
        pos = torch.tensor(lengths, device=self.device)[:, None]
        uniform = min(lengths) == span - 1  # no mask: every row sees the whole span
        key_valid = None if uniform else torch.arange(span, device=self.device) <= pos
        self.cache.bind(slice(0, len(tokens)), span, None if uniform else pos[:, 0])
        ids = torch.tensor(tokens, device=self.device)[:, None]
        model = self._decoder(len(tokens))
        return model(ids, positions=pos, key_valid=key_valid, cache=self.cache, last_only=True)[:, -1]

    def _prefill(self, rows: list[_Request]) -> Tensor:
        lengths = [len(r.prompt) for r in rows]
        width = max(lengths)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r.prompt)] = torch.tensor(r.prompt)
            r.length = len(r.prompt)
            if r.penalized:
                self.seen[r.slot].zero_()
                self.seen[r.slot, ids[i, : len(r.prompt)].to(self.device)] = True
                self.counts[r.slot].zero_()
        ids = ids.to(self.device)
        lens = torch.tensor(lengths, device=self.device)
        key_valid = None
        if min(lengths) < width:  # right padding: no query sees a padding key
            key_valid = torch.arange(width, device=self.device) < lens[:, None]
        positions = torch.arange(width, device=self.device).expand(len(rows), width)
        self.cache.bind(slice(rows[0].slot, rows[-1].slot + 1), width)
        model = self._decoder(len(rows) * width)
        hidden = model(ids, positions=positions, key_valid=key_valid, cache=self.cache, head=False)
        last = hidden[torch.arange(len(rows), device=self.device), lens - 1]
        return model.lm_head(last[:, None])[:, 0]

    def _advance(self, rows: list[_Request], logits: Tensor) -> list[StepOutput]:
        """Sample each row's next token, apply its stop conditions, free the finished rows' slots."""
        rows = list(rows)
        slots = slice(rows[0].slot, rows[-1].slot + 1)
        params, generators = [r.params for r in rows], [r.generator for r in rows]
        tokens = sample_rows(logits, params, generators, self.seen[slots], self.counts[slots])
        penalized = [i for i, r in enumerate(rows) if r.penalized]
        if penalized:
            index = torch.tensor(penalized, device=self.device)
            self.seen[index + slots.start, tokens[index]] = True
            self.counts[index + slots.start, tokens[index]] += 1
        logprobs = self._logprobs(logits, tokens, rows)
        outputs = []
        for r, token, lp in zip(rows, tokens.tolist(), logprobs):
            outputs.append(self._accept(r, token, lp))
        for r, out in zip(rows, outputs):
            if out.finished:
                self._release(r)
        return outputs

    def _accept(self, r: _Request, token: int, logprob: TokenLogprob | None) -> StepOutput:
        r.generated += 1
        if token in r.stop_ids:
            text = r.text.flush() if r.text else ""
            return StepOutput(r.id, [], True, "stop", text, [logprob] if logprob else None)
        r.last = token
        text = r.text.add(token) if r.text else ""
        reason = None
        if r.text is not None and r.text.stopped:
            reason = "stop"
        elif r.generated == r.params.max_tokens:
            reason = "length"
            text += r.text.flush() if r.text else ""
        return StepOutput(r.id, [token], reason is not None, reason, text, [logprob] if logprob else None)

    def _logprobs(self, logits: Tensor, tokens: Tensor, rows: list[_Request]) -> list[TokenLogprob | None]:
        wanted = [r.params.logprobs for r in rows]
        if all(k is None for k in wanted):
            return [None] * len(rows)
        logp = logits.float().log_softmax(dim=-1)
        chosen = logp.gather(1, tokens[:, None])[:, 0].tolist()
        top = logp.topk(max(k or 0 for k in wanted), dim=-1)
        values, ids = top.values.tolist(), top.indices.tolist()
        return [
            None if k is None else TokenLogprob(t, lp, list(zip(i[:k], v[:k])))
            for k, t, lp, i, v in zip(wanted, tokens.tolist(), chosen, ids, values)
        ]

    def _release(self, r: _Request) -> None:
        """Free ``r``'s slot: the last running request moves into it, so rows stay 0..n-1."""
        last = self.running.pop()
        if last is not r:
            self.cache.move(last.slot, r.slot, last.length)
            if last.penalized:
                self.seen[r.slot] = self.seen[last.slot]
                self.counts[r.slot] = self.counts[last.slot]
            last.slot = r.slot
            self.running[r.slot] = last
        r.slot = -1
