"""Log-likelihood of continuations given a context, the scoring rule of zero-shot benchmarks:

    loglik(c | x) = sum_j log p(c_j | x, c_<j),   greedy(c | x) = every c_j is the argmax

The requests of a question (its choices) are scored together in one forward, as a tree: the tokens
their contexts share run once, each request's own tokens (the rest of its context, then its
continuation) follow them in the same row, and an attention mask lets each request's tokens see the
shared ones and their own, never another request's. Positions restart after the shared part for every
request, so each token sees exactly the sequence it would see alone. Questions are packed side by side
into rows (the mask keeps them apart), so there is hardly any padding; the output layer runs only where
a continuation token is predicted, and no Python loop runs over tokens. Tokens are split as
lm-evaluation-harness splits them: the context alone, and the continuation as what the whole text's
tokens add after the context's (trailing spaces of the context move to the continuation first).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lmforge.infer.cpu import logz_and_topk
from lmforge.models.losses import CHUNK_LOGITS
from lmforge.tokenizer.core import Tokenizer

Request = tuple[list[int], list[int]]  # (context ids, continuation ids)


@dataclass
class Score:
    loglik: float  # sum of log p over the continuation's tokens
    greedy: bool  # every continuation token is the model's argmax
    tokens: int  # continuation tokens scored


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> Request:
    """(context ids, continuation ids) as the harness's ``_encode_pair`` makes them."""
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids) :]


def wide(x: Tensor) -> Tensor:
    """``x`` in at least fp32 (a float64 model's logits stay float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


@dataclass
class _Tree:
    """A question laid out for one row: ``shared`` tokens, then each request's own ``tails``, of which
    the last ``scored[i]`` tokens are its continuation."""

    question: int
    requests: list[int]  # the question's request indices, one per tail
    shared: list[int]
    tails: list[list[int]]
    scored: list[int]

    def __len__(self) -> int:  # the slots it fills: a tail's last token is never fed
        return len(self.shared) + sum(len(t) - 1 for t in self.tails)


def _common_prefix(sequences: list[list[int]]) -> int:
    n = min(map(len, sequences))
    for i in range(n):
        if any(s[i] != sequences[0][i] for s in sequences):
            return i
    return n


def _trees(questions: list[list[Request]], limit: int) -> list[_Tree]:
    """A tree per question; a question whose requests share no first token, or too long for the model
    (more than ``limit`` = max_seq_len + 1 tokens on a path), is split into one tree per request, its
    context then cut from the left to fit, as the harness cuts."""
    trees = []
    for q, requests in enumerate(questions):
        for context, continuation in requests:
            if not context or not continuation:
                raise ValueError("an empty context or continuation: nothing to condition on or to score")
        shared = _common_prefix([c for c, _ in requests])
        together = shared and max(len(c) + len(x) for c, x in requests) <= limit
        groups = [list(range(len(requests)))] if together else [[k] for k in range(len(requests))]
        for ks in groups:
            paths = [(requests[k][0] + requests[k][1])[-limit:] for k in ks]
            contexts = [len(p) - len(requests[k][1]) for p, k in zip(paths, ks)]
            cut = max(1, min(_common_prefix(paths), *contexts))  # a continuation longer than the
            tails = [p[cut:] for p in paths]  # model's window keeps its last tokens that fit
            scored = [min(len(requests[k][1]), len(t)) for k, t in zip(ks, tails)]
            trees.append(_Tree(q, ks, paths[0][:cut], tails, scored))
    return trees


ROW = 256  # tokens a row holds at least: packing more short trees per row costs attention over the row


@torch.no_grad()
def score_requests(
    model: nn.Module, questions: list[list[Request]], batch_tokens: int = 4096, desc: str | None = None
) -> list[list[Score]]:
    """The score of every request (context, continuation) of every question.

    A question's requests are scored together, their contexts' shared tokens computed once (see the
    module's docstring). Trees are packed (best fit, longest first) into rows as long as the longest tree (or
    ``ROW`` tokens), and about ``batch_tokens`` tokens of rows go through the model at a time. With
    ``desc``, a progress bar (of tokens) so labelled.
    """
    trees = _trees(questions, model.config.max_seq_len + 1)
    rows: list[list[_Tree]] = []
    room: list[tuple[int, int]] = []  # (free slots, row), sorted
    for tree in sorted(trees, key=len, reverse=True):  # best fit, decreasing: rows nearly full
        fits = bisect.bisect_left(room, (len(tree), -1))
        if fits < len(room):
            free, r = room.pop(fits)
        else:
            free, r = max(ROW, len(tree)), len(rows)
            rows.append([])
        rows[r].append(tree)
        bisect.insort(room, (free - len(tree), r))
    out: list[list[Score | None]] = [[None] * len(requests) for requests in questions]
    bar = tqdm(total=sum(map(len, trees)), unit="tok", desc=desc, disable=desc is None, leave=False)
    start = 0
    while start < len(rows):  # rows are in decreasing width: a batch pads little
        width = sum(map(len, rows[start]))
        end = start + max(1, batch_tokens // max(width, 1))
        for tree, scores in _score_rows(model, rows[start:end]):
            for k, score in zip(tree.requests, scores):
                out[tree.question][k] = score
        bar.update(sum(len(tree) for row in rows[start:end] for tree in row))
        start = end
    bar.close()
    return out  # type: ignore[return-value]


def _score_rows(model: nn.Module, rows: list[list[_Tree]]) -> list[tuple[_Tree, list[Score]]]:
    """One forward over the packed rows; each tree's requests' scores."""
    device = model.lm_head.weight.device
    width = max(sum(map(len, row)) for row in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    group = torch.full((len(rows), width), -1, dtype=torch.long)  # the tree of each slot (-1: padding)
    branch = torch.zeros(len(rows), width, dtype=torch.long)  # 0: shared tokens, i + 1: request i's own
    at, target, request = [], [], []  # per scored token: (row, slot) predicting it, the token, its request
    done: list[tuple[_Tree, int]] = []
    for r, row in enumerate(rows):
        offset = 0
        for tree in row:
            n = len(tree.shared)
            ids[r, offset : offset + n] = torch.tensor(tree.shared)
            positions[r, offset : offset + n] = torch.arange(n)
            group[r, offset : offset + len(tree)] = len(done)
            slot = offset + n
            for i, (tail, scored) in enumerate(zip(tree.tails, tree.scored)):
                fed = tail[:-1]  # the last token predicts nothing scored
                ids[r, slot : slot + len(fed)] = torch.tensor(fed, dtype=torch.long)
                positions[r, slot : slot + len(fed)] = torch.arange(n, n + len(fed))
                branch[r, slot : slot + len(fed)] = i + 1
                for j in range(len(tail) - scored, len(tail)):  # its predictor: token j - 1 of the path
                    at.append((r, offset + n - 1 if j == 0 else slot + j - 1))
                    target.append(tail[j])
                    request.append(len(done) + i)
                slot += len(fed)
            done += [(tree, i) for i in range(len(tree.tails))]
            offset += len(tree)
    same_tree = group[:, :, None] == group[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    visible = (branch[:, None, :] == 0) | (branch[:, None, :] == branch[:, :, None])
    allowed = (same_tree & causal & visible)[:, None].to(device)
    # as an additive mask (0 where seen, -inf where not): converted once, not in every layer's attention
    dtype = model.lm_head.weight.dtype
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, float("-inf"))
    hidden = model(ids.to(device), positions=positions.to(device), attention=mask, head=False)
    where = torch.tensor(at, device=device)
    hidden = hidden[where[:, 0], where[:, 1]]
    target_t = torch.tensor(target, device=device)
    logp = torch.empty(len(target), dtype=wide(hidden).dtype, device=device)
    best = torch.empty(len(target), dtype=torch.bool, device=device)
    step = max(1, CHUNK_LOGITS // model.lm_head.weight.size(0))
    for i in range(0, len(target), step):  # the logits of a few thousand tokens at a time
        logits = wide(model.lm_head(hidden[i : i + step]))
        t = target_t[i : i + step, None]
        picked = logits.gather(1, t)
        found = logz_and_topk(logits, 1)  # log Z and the argmax in one pass of lmforge's C kernel
        if found is not None:
            log_z, _, greedy = found
        else:
            top, greedy = logits.max(dim=-1, keepdim=True)  # the argmax too, in the same pass
            top.masked_fill_(top.isinf(), 0.0)  # as torch.logsumexp: a row of -inf gives -inf, not NaN
            # log Z = max + log sum exp(logit - max), torch.logsumexp's steps, in place: a chunk's
            # logits are tens of MB, and a new tensor of that size per step costs more than the arithmetic
            log_z = logits.sub_(top).exp_().sum(dim=-1, keepdim=True).log_().add_(top)
        logp[i : i + step] = (picked - log_z)[:, 0]
        best[i : i + step] = greedy[:, 0] == t[:, 0]
    owner = torch.tensor(request, device=device)
    total = torch.zeros(len(done), dtype=logp.dtype, device=device).index_add_(0, owner, logp)
    misses = torch.zeros(len(done), dtype=torch.long, device=device).index_add_(0, owner, (~best).long())
    scores = [
        Score(loglik, missed == 0, tree.scored[i])
        for loglik, missed, (tree, i) in zip(total.tolist(), misses.tolist(), done)
    ]
    out, i = [], 0
    for r in rows:
        for tree in r:
            out.append((tree, scores[i : i + len(tree.tails)]))
            i += len(tree.tails)
    return out
