"""Beam search: keep the k most likely continuations of each prompt, step by step, as transformers does.

Each step extends every running beam by every token and scores the candidate by its summed log-probability
log p(y_1..y_t | x). Per prompt the best 2k of the k*V candidates are kept (k of them may end in eos, so
k that do not are left to go on). A candidate ending in eos among the top k becomes a finished hypothesis,
scored

    log p(y | x) / |y|^alpha        (|y| counts the eos; alpha is ``length_penalty``)

and the prompt keeps its k best; the best k candidates that do not end are the next running beams. At
``max_new_tokens`` the top k candidates all finish. A prompt is done when no running beam can beat its
finished hypotheses (``early_stopping``: True as soon as it has k of them; False when the best running
beam, scored at its current length, cannot beat the worst; "never" the same but scored at the longest
length when that is the more hopeful bound); its answer is the best hypothesis.

The search is model-agnostic: it drives a ``Stepper``, which owns the model, its cache and the beams' rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from lmforge.infer.cpu import logz_and_topk
from lmforge.infer.sampling import GenerationConfig
from lmforge.models.gpt import GPT
from lmforge.models.layers import KVCache


class Stepper(Protocol):
    """The model side of beam search: next-token logits for every beam of every prompt still searched."""

    def start(self, beams: int) -> Tensor:
        """Run the B prompts (decoder: prefill into a KV cache), repeat each row ``beams`` times (row
        b*beams+j is beam j of prompt b), return next-token logits (B*beams, V)."""

    def step(self, tokens: Tensor, parents: Tensor) -> Tensor:
        """Keep row parents[i] of the previous rows as row i (cache reorder), feed tokens[i] to row i,
        return next-token logits (N, V). Rows of prompts that are done are left out of ``parents``, so N
        shrinks by ``beams`` for each."""


class BeamRows:
    """Which KV-cache row holds each beam, so that following the beams copies only what it must.

    Each step beam i continues beam parents[i]. Gathering the whole cache into the new order would
    copy every row; instead a parent's first child keeps the parent's row (the parent's keys are the
    child's keys too) and only its further children copy it, into the rows of beams that no child
    continues. ``rows[i]`` is beam i's cache row; the model runs over cache rows, so a step's inputs
    are scattered to them (``to_rows``) and its outputs gathered back (``from_rows``). A prompt's
    beams stay in its own block of rows (each prompt frees as many rows as it copies into), which
    per-prompt state (padding, positions, an encoder's memory) relies on.
    """

    def __init__(self, n: int, device: torch.device):
        self.rows = torch.arange(n, device=device)
        self.in_order = True  # rows[i] == i: nothing to scatter or gather (greedy decoding, always)

    def follow(self, parents: Tensor, cache: KVCache) -> Tensor | None:
        """Beam i now continues beam parents[i]. When beams were dropped (prompts done) the cache is
        compacted in beam order; the cache rows kept are returned, for the caller's per-row state."""
        rows, n = self.rows[parents], len(parents)
        if n != len(self.rows):
            cache.reorder(rows)
            self.rows, self.in_order = torch.arange(n, device=rows.device), True
            return rows
        beams = torch.arange(n, device=rows.device)
        first = torch.full_like(rows, n).scatter_reduce_(0, rows, beams, "amin")  # first child per row
        extra = first[rows] != beams
        if extra.any():
            free = (first == n).nonzero()[:, 0]  # rows no beam continues; ascending, like ``extra``
            cache.copy_rows(rows[extra], free)
            rows[extra] = free
        self.rows, self.in_order = rows, bool(torch.equal(rows, beams))
        return None

    def to_rows(self, x: Tensor) -> Tensor:
        """x (beams, ...) laid out by cache row."""
        return x if self.in_order else torch.empty_like(x).index_copy_(0, self.rows, x)

    def from_rows(self, y: Tensor) -> Tensor:
        """y (cache rows, ...) in beam order."""
        return y if self.in_order else y[self.rows]


class DecoderStepper:
    """A decoder-only GPT as a ``Stepper``: the prompts, left-padded, prefill one KV cache (sized for the
    longest prompt + ``max_new_tokens``) whose rows then follow the beams (``BeamRows``)."""

    def __init__(self, model: GPT, prompts: list[list[int]], max_new_tokens: int, pad_id: int = 0):
        device = model.lm_head.weight.device
        width = max(map(len, prompts))
        self.model = model
        self.ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        pads = (width - lengths)[:, None]
        self.positions = (torch.arange(width, device=device) - pads).clamp(min=0)  # from 0 at each prompt
        self.valid = torch.arange(width + max_new_tokens, device=device) >= pads  # key_valid of every slot
        self.next_position = lengths  # per cache row, like ``valid``: the same for a prompt's beams
        self.cache = model.new_cache(len(prompts), width + max_new_tokens)

    def start(self, beams: int) -> Tensor:
        logits = self._forward(self.ids, self.positions)
        rows = torch.arange(len(self.ids), device=logits.device).repeat_interleave(beams)
        self.cache.reorder(rows)
        self.valid, self.next_position = self.valid[rows], self.next_position[rows]
        self.rows = BeamRows(len(rows), logits.device)
        return logits[rows]

    def step(self, tokens: Tensor, parents: Tensor) -> Tensor:
        kept = self.rows.follow(parents, self.cache)
        if kept is not None:
            self.valid, self.next_position = self.valid[kept], self.next_position[kept]
        tokens = self.rows.to_rows(tokens)
        logits = self._forward(tokens[:, None], self.next_position[:, None])
        self.next_position = self.next_position + 1
        return self.rows.from_rows(logits)

    def _forward(self, ids: Tensor, positions: Tensor) -> Tensor:
        key_valid = self.valid[:, : self.cache.length + ids.size(1)]
        out = self.model(ids, positions=positions, key_valid=key_valid, cache=self.cache, last_only=True)
        return out[:, -1]


@dataclass
class Hypothesis:
    token_ids: list[int]  # the new tokens, eos not included
    score: float  # log p(y | x) / |y|^length_penalty, |y| counting the eos


def ban_repeated_ngrams(scores: Tensor, history: Tensor, n: int) -> Tensor:
    """``scores`` (N, V) (logits or log-probabilities) with -inf for every token that would repeat an
    n-gram of ``history`` (N, L), whose padding is the token V (one past the vocabulary): it matches
    no real token and bans nothing.

    The next token completes the n-gram (last n-1 tokens, token); each earlier window of n tokens that
    starts with those n-1 bans its own last token. (transformers' windows also cover a left-padded batch's
    pad tokens: the same bans unless the model generates the pad token, e.g. never when pad is eos.)
    """
    vocab = scores.size(-1)
    if history.size(1) < n:
        return scores
    prefix = history[:, history.size(1) - n + 1 :]
    windows = history.unfold(1, n, 1)  # (N, L - n + 1, n)
    repeats = (windows[..., :-1] == prefix[:, None]).all(dim=-1)
    banned = torch.zeros(len(history), vocab + 1, dtype=torch.bool, device=history.device)
    banned.scatter_(1, torch.where(repeats, windows[..., -1], vocab), True)  # column V: a spare
    return scores.masked_fill(banned[:, :vocab], float("-inf"))


def best_continuations(
    logits: Tensor, log_z: Tensor, scores: Tensor, m: int, per_beam: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """The best m of each prompt's k * V continuations by log p(prefix) + log p(token | prefix):
    their summed log-probabilities (n, m), best first, parent beams and tokens.

    ``logits`` (n * k, V) with their log-normalisers ``log_z`` (n * k, 1); ``scores`` (n, k): each
    beam's log p(prefix). Log-softmax is monotonic within a beam, so a prompt's best m come from its
    beams' m best tokens each: only those k * m candidates are normalised and ranked (the (n * k, V)
    log-probabilities are never written). ``per_beam``: those m best logits of each beam and their
    tokens when already known (``infer/cpu.py: logz_and_topk``).
    """
    n, k = scores.shape
    best, tokens = per_beam or logits.topk(min(m, logits.size(-1)))  # per beam
    total = ((best - log_z).view(n, k, -1) + scores[:, :, None]).view(n, -1)
    top, index = total.topk(m)
    return top, index // best.size(-1), tokens.view(n, -1).gather(1, index)


def gather_beams(x: Tensor, index: Tensor) -> Tensor:
    """x[i, index[i, j]] for every prompt i: (n, m, ...) -> (n, k, ...) for ``index`` (n, k)."""
    return torch.take_along_dim(x, index.view(*index.shape, *[1] * (x.dim() - 2)), dim=1)


def merge_beams(old: Tensor, new: Tensor, index: Tensor) -> Tensor:
    """``gather_beams`` of ``old`` (n, m, ...) and ``new`` side by side: j < m picks old[:, j]."""
    return gather_beams(torch.cat((old, new), dim=1), index)


@torch.inference_mode()
def beam_search(
    stepper: Stepper, prefixes: list[list[int]], cfg: GenerationConfig, eos_id: int | None
) -> list[Hypothesis]:
    """The best hypothesis for each prompt, searched with ``cfg.num_beams`` beams (see the module's doc).

    prefixes: each prompt's token history that ``no_repeat_ngram_size`` looks at (a decoder's prompt, an
    encoder-decoder's decoder start token). eos_id None: nothing ends before ``max_new_tokens``.
    """
    k, steps, alpha = cfg.num_beams, cfg.max_new_tokens, cfg.length_penalty
    width = max(map(len, prefixes))
    logits = stepper.start(k)
    b, vocab, device = len(prefixes), logits.size(-1), logits.device
    # Per prompt still searched and beam, as transformers keeps them: history + new tokens, left-padded
    # with the token V.
    running = torch.full((b, k, width + steps), vocab, dtype=torch.long, device=device)
    for i, p in enumerate(prefixes):
        running[i, :, width - len(p) : width] = torch.tensor(p, device=device)
    running_scores = torch.full((b, k), float("-inf"), device=device)
    running_scores[:, 0] = 0.0  # the k beams start as copies: only the first one's continuations count
    finished = running.clone()  # the k best finished hypotheses, best first
    finished_scores = torch.full((b, k), float("-inf"), device=device)
    finished_lengths = torch.zeros(b, k, dtype=torch.long, device=device)  # new tokens, eos left out
    live = torch.arange(b, device=device)  # the prompts still searched, in the stepper's row order
    in_top_k = torch.arange(2 * k, device=device) < k
    best: dict[int, Hypothesis] = {}  # by prompt, as each is done
    for t in range(steps):
        n, end = len(live), width + t
        logits = logits.float()
        banned = cfg.no_repeat_ngram_size or (eos_id is not None and t < cfg.min_new_tokens)
        # log p(v | prefix) = logit_v - log Z; on a CPU log Z and each beam's best tokens in one pass in C
        fused = None if banned else logz_and_topk(logits, min(2 * k, vocab))
        if fused is not None:
            log_z, per_beam = fused[0], fused[1:]
        else:
            log_z, per_beam = logits.logsumexp(dim=-1, keepdim=True), None
        if cfg.no_repeat_ngram_size:
            logits = ban_repeated_ngrams(logits, running[:, :, :end].flatten(0, 1), cfg.no_repeat_ngram_size)
        if eos_id is not None and t < cfg.min_new_tokens:
            logits[:, eos_id] = float("-inf")
        top, parent, token = best_continuations(logits, log_z, running_scores, 2 * k, per_beam)
        candidates = gather_beams(running, parent)
        candidates[:, :, end] = token
        is_eos = token == eos_id if eos_id is not None else torch.zeros_like(token, dtype=torch.bool)
        ends = is_eos | (t == steps - 1)

        # The best k candidates that do not end are the next running beams; those of the top k that end
        # join the finished hypotheses, of which the k best stay.
        go_on = top.masked_fill(ends, float("-inf")).topk(k).indices
        running, running_scores = gather_beams(candidates, go_on), top.gather(1, go_on)
        finishing = ends & in_top_k
        if bool(finishing.any()):  # most steps nothing finishes: nothing to merge
            score = (top / (t + 1) ** alpha).masked_fill(~finishing, float("-inf"))
            keep = torch.cat((finished_scores, score), dim=1).topk(k).indices
            finished = merge_beams(finished, candidates, keep)
            finished_scores = merge_beams(finished_scores, score, keep)
            finished_lengths = merge_beams(finished_lengths, t + 1 - is_eos.long(), keep)

        # A prompt is done once it has k finished hypotheses and either early_stopping or no hope that
        # the best running beam beats the worst of them (transformers' heuristic).
        hoped_length = steps if cfg.early_stopping == "never" and alpha > 0 else t + 1
        hope = running_scores[:, 0] / hoped_length**alpha
        worst = finished_scores[:, -1]  # -inf until k hypotheses have finished
        beaten = (hope <= worst) | (cfg.early_stopping is True)
        searched = ~((worst > float("-inf")) & beaten) & (t < steps - 1)
        done = (~searched).nonzero()[:, 0].tolist()
        for i in done:
            length = int(finished_lengths[i, 0])
            best[int(live[i])] = Hypothesis(
                finished[i, 0, width : width + length].tolist(), float(finished_scores[i, 0])
            )
        if len(done) == n:
            break
        rows = torch.arange(n, device=device)[:, None] * k + parent.gather(1, go_on)
        if done:  # their rows leave the search
            rows, live, running, running_scores = (x[searched] for x in (rows, live, running, running_scores))
            finished, finished_scores = finished[searched], finished_scores[searched]
            finished_lengths = finished_lengths[searched]
        logits = stepper.step(running[:, :, end].flatten(), rows.flatten())
    return [best[i] for i in range(b)]
