"""Generation with an encoder-decoder: y ~ p(y | x) = prod_t p(y_t | y_<t, x).

The source runs once through the encoder; each decoder layer's cross-attention keys and values of it
are computed once too (``Seq2Seq.memory_kv``), and the target grows one token per step on the decoder's
KV cache. Greedy, sampling and beam search (``infer/beam.py``) drive the same ``Seq2SeqStepper``.
Sources are batched by length, so a batch pads little.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from lmforge.errors import LmforgeError
from lmforge.infer.beam import BeamRows, beam_search
from lmforge.infer.cpu import (
    SEQ2SEQ_NATIVE_ROWS,
    Seq2SeqDecoder,
    packed_for_decode,
    packing_rows,
    seq2seq_decoder,
)
from lmforge.infer.sampling import GenerationConfig, SamplingParams, sample_rows
from lmforge.models.seq2seq import Seq2Seq
from lmforge.models.task import pad
from lmforge.tokenizer.core import Tokenizer


class Seq2SeqStepper:
    """The ``Stepper`` of beam search (and of greedy and sampled decoding) for an encoder-decoder: one row
    per hypothesis, each starting from the model's decoder start token, the rows of a source's beams
    side by side. The memory keeps one row per source still decoded: a source's beams share it
    (``CrossAttention`` groups their queries), so it is never copied per beam. On a CPU, forwards of
    enough rows run on the model's oneDNN-packed copy (``infer/cpu.py``), as the decoder engine's do;
    ``pack=False`` for a model in training, whose weights a fused optimizer changes without bumping
    their version counters (the cached copy would go stale)."""

    def __init__(self, model: Seq2Seq, sources: list[list[int]], max_new_tokens: int, pack: bool = True):
        self.model, self.max_new_tokens, self.pack = model, max_new_tokens, pack
        self.pack_from = packing_rows(model) if pack else None
        self.native: Seq2SeqDecoder | None = None  # the decode step in C (infer/cpu.py)
        self.bound: tuple | None = None  # the memory as the C step reads it (remade when it changes)
        self.packed: Seq2Seq | None = None
        device = model.lm_head.weight.device
        ids, valid = (t.to(device) for t in pad(sources, 0))
        self.valid = None if bool(valid.all()) else valid  # no padding: no mask (the faster kernels)
        encoder = self._for_rows(int(valid.sum()))
        self.memory = encoder.memory_kv(encoder.encode(ids, self.valid))
        self.sources = torch.arange(len(sources), device=device)  # the source of each memory row
        self.group, self.beams = self.sources, 1  # the source of each decoder row; rows per source

    def _for_rows(self, rows: int) -> Seq2Seq:
        """The model for a forward of ``rows`` token rows: the packed copy where it is the faster."""
        if self.pack_from is None or rows < self.pack_from:
            return self.model
        if self.packed is None:  # looked up once: the weights cannot change during one generation
            self.packed = packed_for_decode(self.model, rows)
        return self.packed

    def _sources(self, kept: Tensor) -> None:
        """Keep the memory of the sources whose beams are in cache rows ``kept`` (blocks of ``beams``
        rows): the sources whose search is done leave it."""
        self.group = self.group[kept]
        sources = self.group[:: self.beams].contiguous()
        keep = torch.searchsorted(self.sources, sources)  # both ascending: rows keep source order
        self.memory = [(k[keep], v[keep]) for k, v in self.memory]
        self.bound = None
        self.valid = None if self.valid is None else self.valid[keep]
        self.sources = sources

    def start(self, beams: int) -> Tensor:
        n = len(self.group)
        self.group, self.beams = self.group.repeat_interleave(beams), beams
        self.rows = BeamRows(n * beams, self.group.device)
        self.cache = self.model.new_cache(n * beams, self.max_new_tokens + 1)
        self.native = seq2seq_decoder(self.model, self.cache) if self.pack else None
        start = torch.full((n * beams, 1), self.model.config.decoder_start_id, device=self.group.device)
        return self._logits(start)

    def step(self, tokens: Tensor, parents: Tensor) -> Tensor:
        kept = self.rows.follow(parents, self.cache)
        if kept is not None:
            self._sources(kept)
        return self._logits(self.rows.to_rows(tokens)[:, None])

    def _logits(self, tokens: Tensor) -> Tensor:
        """Next-token logits of each beam, its cache row fed ``tokens[row]`` (rows, 1); the rows' last
        states are put in beam order before the head (cheaper than its logits)."""
        decoder = self._for_rows(len(tokens))
        states = None
        if self.native is not None and len(tokens) <= SEQ2SEQ_NATIVE_ROWS:
            self.bound = self.bound or self.native.bind(self.memory)
            states = self.native(tokens, self.bound, self.valid, self.cache, self.beams)
        if states is None:
            states = decoder.decode(tokens, self.memory, self.valid, cache=self.cache, head=False)[:, -1]
        return decoder.logits(self.rows.from_rows(states)).float()


def encode_sources(tokenizer: Tokenizer, texts: list[str], max_len: int) -> list[list[int]]:
    """Token ids of each source, ending in eos (the end of the source, as the model was trained; a
    tokenizer whose template adds eos already gets no second one), cut to ``max_len``."""
    eos = tokenizer.eos_id
    out = []
    for ids in tokenizer.encode_batch(texts):
        if eos is not None and (not ids or ids[-1] != eos):
            ids = [*ids, eos]
        out.append(ids[: max_len - 1] + ids[-1:] if len(ids) > max_len else ids)
    return out


@torch.no_grad()
def sample_ids(
    model: Seq2Seq, sources: list[list[int]], cfg: GenerationConfig, eos_id: int | None, pack: bool = True
) -> list[list[int]]:
    """Greedy (temperature 0) or sampled targets for a batch of sources, eos not included."""
    stepper = Seq2SeqStepper(model, sources, cfg.max_new_tokens, pack)
    params = SamplingParams.from_config(cfg)
    params.seed = None
    generators = [None] * len(sources)
    if cfg.seed is not None and not cfg.greedy:
        generators = [
            torch.Generator(model.lm_head.weight.device).manual_seed(cfg.seed + i)
            for i in range(len(sources))
        ]
    n, vocab = len(sources), model.config.vocab_size
    seen = torch.zeros(n, vocab, dtype=torch.bool, device=stepper.group.device)
    counts = torch.zeros(n, vocab, device=stepper.group.device)
    out: list[list[int]] = [[] for _ in sources]
    done = torch.zeros(n, dtype=torch.bool)
    rows = torch.arange(n, device=stepper.group.device)
    logits = stepper.start(1)
    for step in range(cfg.max_new_tokens):
        tokens = sample_rows(logits, [params] * n, generators, seen, counts)
        for i, t in enumerate(tokens.tolist()):
            if done[i]:
                continue
            if t == eos_id and cfg.stop_at_eos:
                done[i] = True
            else:
                out[i].append(t)
        if done.all() or step == cfg.max_new_tokens - 1:  # the last token is never fed back
            break
        seen[rows, tokens] = True
        counts[rows, tokens] += 1
        logits = stepper.step(tokens, rows)
    return out


def generate_ids(
    model: Seq2Seq, sources: list[list[int]], cfg: GenerationConfig, eos_id: int | None, pack: bool = True
) -> list[list[int]]:
    """Targets for ``sources``: beam search with ``cfg.num_beams`` > 1, else greedy or sampling;
    ``pack`` as in ``Seq2SeqStepper``."""
    if cfg.num_beams > 1:
        stepper = Seq2SeqStepper(model, sources, cfg.max_new_tokens, pack)
        start = [[model.config.decoder_start_id] for _ in sources]
        return [h.token_ids for h in beam_search(stepper, start, cfg, eos_id)]
    return sample_ids(model, sources, cfg, eos_id, pack)


def _batches(lengths: list[int], batch_size: int) -> Iterator[list[int]]:
    """Indices in batches of similar length (longest first, so memory peaks at once)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]


def translate(
    model: Seq2Seq,
    tokenizer: Tokenizer,
    texts: list[str],
    cfg: GenerationConfig | None = None,
    batch_size: int = 32,
    max_source_len: int | None = None,
    **kwargs,
) -> list[str]:
    """The generated target text for each source text (translation, summarization), in input order."""
    cfg = cfg or GenerationConfig(**kwargs)
    if tokenizer.eos_id is None:
        raise LmforgeError("the tokenizer has no eos token: an encoder-decoder needs one to end a target")
    sources = encode_sources(tokenizer, texts, max_source_len or model.config.max_seq_len)
    if cfg.max_new_tokens > model.config.max_seq_len:
        raise LmforgeError(
            f"max_new_tokens={cfg.max_new_tokens} exceeds the model's "
            f"{model.config.max_seq_len} target positions"
        )
    outputs: list[str] = [""] * len(texts)
    for index in _batches([len(s) for s in sources], batch_size):
        ids = generate_ids(
            model, [sources[i] for i in index], cfg, tokenizer.eos_id if cfg.stop_at_eos else None
        )
        for i, new in zip(index, ids):
            outputs[i] = tokenizer.decode(new)
    return outputs
