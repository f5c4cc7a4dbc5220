"""From next-token logits to a chosen token: penalties, temperature, top-k, top-p (nucleus), sampling.

The order is the usual one (and that of ``transformers``): repetition penalty, temperature, top-k,
top-p, then sample; temperature 0 means greedy argmax. ``GenerationConfig`` also holds the settings of
beam search (``num_beams`` > 1, infer/beam.py), which is deterministic and leaves sampling at its defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from lmforge.config import ConfigError


@dataclass
class GenerationConfig:
    max_new_tokens: int = 50
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # 1: off; > 1 discourages tokens already in the sequence
    stop: list[str] = field(default_factory=list)  # generation ends before any of these strings
    stop_at_eos: bool = True
    seed: int | None = None
    truncate: Literal["error", "left"] = "error"  # a prompt too long for the context window
    num_beams: int = 1  # > 1: beam search (deterministic: leave the sampling settings at their defaults)
    length_penalty: float = 1.0  # beams score log p(y|x) / |y|^length_penalty: > 0 favours longer outputs
    early_stopping: bool | Literal["never"] = False  # beams: true, false (heuristic) or never; infer/beam.py
    no_repeat_ngram_size: int = 0  # beams: no n-gram of this size twice in prompt + output (0: off)
    min_new_tokens: int = 0  # beams: eos is barred before this many new tokens

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self._check_beams()

    def _check_beams(self) -> None:
        if self.num_beams < 1:
            raise ConfigError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.no_repeat_ngram_size < 0:
            raise ConfigError(f"no_repeat_ngram_size must be >= 0 (0 = off), got {self.no_repeat_ngram_size}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ConfigError(
                f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens} "
                f"(max_new_tokens={self.max_new_tokens})"
            )
        if self.num_beams == 1:
            if self.no_repeat_ngram_size or self.min_new_tokens:
                raise ConfigError("no_repeat_ngram_size and min_new_tokens need beam search (num_beams > 1)")
            return
        sampling = {
            "temperature": self.temperature not in (0.0, 1.0),
            "top_k": self.top_k != 0,
            "top_p": self.top_p != 1.0,
            "repetition_penalty": self.repetition_penalty != 1.0,
            "stop": bool(self.stop),
        }
        if any(sampling.values()):
            raise ConfigError(
                f"beam search (num_beams={self.num_beams}) is deterministic and takes neither sampling nor "
                f"stop strings: leave {', '.join(k for k, v in sampling.items() if v)} at the default "
                "(use no_repeat_ngram_size against repetition)"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def penalize_seen(logits: Tensor, seen: Tensor, penalty: float | Tensor) -> Tensor:
    """Divide positive (multiply negative) logits where ``seen`` (B, V) is True by ``penalty``
    (a float, or (B, 1) for one penalty per row)."""
    return torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)


def apply_repetition_penalty(logits: Tensor, history: Tensor, penalty: float | Tensor) -> Tensor:
    """``penalize_seen`` for the tokens of ``history`` (B, L)."""
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, history, True)
    return penalize_seen(logits, seen, penalty)


def top_k_filter(logits: Tensor, k: int | Tensor) -> Tensor:
    """Keep the k largest logits of each row, -inf elsewhere; ``k`` (B,) gives each row its own
    (0: keep all)."""
    if isinstance(k, int):
        k = torch.full((logits.size(0),), k, device=logits.device)
    k = k.clamp(max=logits.size(-1))
    k_max = int(k.max())
    if k_max == 0:
        return logits
    top = torch.topk(logits, k_max, dim=-1).values
    kth = top.gather(1, (k.clamp(min=1) - 1)[:, None])
    kth = kth.masked_fill(k[:, None] == 0, float("-inf"))
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float | Tensor) -> Tensor:
    """Keep the smallest set of most likely tokens whose probabilities sum to at least p; ``p`` (B, 1)
    gives each row its own (1: keep all)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above each one
    drop_sorted = (mass_before >= p) & (p < 1)  # p = 1: rounding must not drop the tail
    drop_sorted[:, 0] = False  # always keep the most likely token
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


@dataclass
class SamplingParams:
    """One request's decoding settings: the engine gives every row its own (OpenAI's fields)."""

    max_tokens: int = 16
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # over prompt and output, as transformers does
    presence_penalty: float = 0.0  # subtracted once from every token already in the output
    frequency_penalty: float = 0.0  # subtracted per occurrence in the output
    seed: int | None = None  # a generator of the request's own: same tokens whatever else runs
    stop: list[str] = field(default_factory=list)  # the text ends before any of these
    stop_token_ids: list[int] = field(default_factory=list)  # end on these (left out of the output)
    ignore_eos: bool = False
    logprobs: int | None = None  # log-probabilities of each chosen token and this many top alternatives

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {self.max_tokens}")
        GenerationConfig(
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
        )  # the shared range checks
        if not -2 <= self.presence_penalty <= 2 or not -2 <= self.frequency_penalty <= 2:
            raise ConfigError("presence_penalty and frequency_penalty must be in [-2, 2]")
        if self.logprobs is not None and self.logprobs < 0:
            raise ConfigError(f"logprobs must be >= 0, got {self.logprobs}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if any(not s for s in self.stop):
            raise ConfigError("stop strings must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_config(cls, cfg: GenerationConfig) -> SamplingParams:
        return cls(
            max_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            repetition_penalty=cfg.repetition_penalty,
            seed=cfg.seed,
            stop=list(cfg.stop),
            ignore_eos=not cfg.stop_at_eos,
        )


def sample_rows(
    logits: Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    seen: Tensor,
    counts: Tensor,
) -> Tensor:
    """One token per row of ``logits`` (B, V), each row under its own params; returns (B,).

    seen (B, V): tokens of the prompt and output (repetition penalty); counts (B, V): output token
    counts (presence and frequency penalties). Each sampled row draws from its own generator, so its
    tokens do not depend on the other rows; greedy rows take the argmax.
    """
    logits = logits.float()
    column = lambda values: torch.tensor(values, device=logits.device)[:, None]  # noqa: E731
    if any(p.repetition_penalty != 1.0 for p in params):
        logits = penalize_seen(logits, seen, column([p.repetition_penalty for p in params]))
    if any(p.presence_penalty or p.frequency_penalty for p in params):
        presence = column([p.presence_penalty for p in params]) * (counts > 0)
        logits = logits - presence - column([p.frequency_penalty for p in params]) * counts
    chosen = logits.argmax(dim=-1)
    rows = [i for i, p in enumerate(params) if not p.greedy]
    if not rows:
        return chosen
    sub = [params[i] for i in rows]
    scaled = logits[rows] / column([p.temperature for p in sub])
    if any(p.top_k for p in sub):
        scaled = top_k_filter(scaled, column([p.top_k for p in sub])[:, 0])
    if any(p.top_p < 1 for p in sub):
        scaled = top_p_filter(scaled, column([p.top_p for p in sub]))
    probs = scaled.softmax(dim=-1)
    for j, i in enumerate(rows):
        chosen[i] = torch.multinomial(probs[j : j + 1], 1, generator=generators[i])[0, 0]
    return chosen
