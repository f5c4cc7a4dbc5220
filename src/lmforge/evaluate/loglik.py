"""Log-likelihood of continuations given a context, the scoring rule of zero-shot benchmarks:

    loglik(c | x) = sum_j log p(c_j | x, c_<j),   greedy(c | x) = every c_j is the argmax

Requests that share a context (a question's choices) are scored together: the contexts of a batch of
questions run once, left-padded, into a KV cache, whose rows are then repeated for each choice, and all
the choices continue from it in one forward. So a context is computed once however many choices it has,
and no Python loop runs over tokens. Tokens are split as lm-evaluation-harness splits them: the context
alone, and the continuation as what the whole text's tokens add after the context's (trailing spaces of
the context move to the continuation first).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lmforge.models.losses import CHUNK_LOGITS
from lmforge.tokenizer.core import Tokenizer


@dataclass
class Score:
    loglik: float  # sum of log p over the continuation's tokens
    greedy: bool  # every continuation token is the model's argmax
    tokens: int  # continuation tokens scored


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as the harness's ``_encode_pair`` makes them."""
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids) :]


def continuation_scores(logits: Tensor, targets: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Per row: the summed log p of ``targets`` (N, L) under ``logits`` (N, L, V) over the ``valid``
    positions, and whether each was the argmax; the (N, L, V) log-probabilities are never stored."""
    logits = logits.float()
    picked = logits.gather(-1, targets[..., None])[..., 0]
    logp = picked - logits.logsumexp(dim=-1)
    best = logits.argmax(dim=-1) == targets
    return (logp * valid).sum(dim=1), (best | ~valid).all(dim=1)


@torch.no_grad()
def score_requests(
    model: nn.Module,
    contexts: list[list[int]],
    continuations: list[list[list[int]]],
    batch_tokens: int = 4096,
) -> list[list[Score]]:
    """Scores of ``continuations[q][k]`` given ``contexts[q]`` for every question q and choice k.

    Questions go in batches of about ``batch_tokens`` tokens (contexts + choices), longest first so that
    padding is small. A request longer than the model's context keeps its last ``max_seq_len`` + 1
    tokens (the context is cut from the left, as the harness cuts): its choices are then scored one by
    one, each with as much context as it leaves room for.
    """
    limit = model.config.max_seq_len + 1
    groups = []  # (question, its choices' indices, context)
    for q, (context, choices) in enumerate(zip(contexts, continuations)):
        if len(context) + max(map(len, choices)) <= limit:
            groups.append((q, list(range(len(choices))), context))
        else:
            groups += [(q, [k], context[-(limit - len(c)) :]) for k, c in enumerate(choices)]
    size = [len(g[2]) + max(len(continuations[g[0]][k]) for k in g[1]) for g in groups]
    order = sorted(range(len(groups)), key=lambda i: -size[i])
    out: list[list[Score | None]] = [[None] * len(choices) for choices in continuations]
    start = 0
    while start < len(order):
        end, tokens = start, 0
        while end < len(order) and (end == start or tokens < batch_tokens):
            q, ks, context = groups[order[end]]
            tokens += len(context) + sum(len(continuations[q][k]) for k in ks)
            end += 1
        batch = [groups[i] for i in order[start:end]]
        chosen = [[continuations[q][k] for k in ks] for q, ks, _ in batch]
        for (q, ks, _), scores in zip(batch, _score_batch(model, [g[2] for g in batch], chosen)):
            for k, score in zip(ks, scores):
                out[q][k] = score
        start = end
    return out  # type: ignore[return-value]


def _score_batch(
    model: nn.Module, contexts: list[list[int]], continuations: list[list[list[int]]]
) -> list[list[Score]]:
    device = model.lm_head.weight.device
    longest = [max(map(len, choices)) for choices in continuations]
    if any(n == 0 for choices in continuations for n in map(len, choices)):
        raise ValueError("an empty continuation has no tokens to score")
    if any(not c for c in contexts):
        raise ValueError("an empty context: give the model a first token to condition on")
    width, cont_width = max(map(len, contexts)), max(longest) - 1
    pads = torch.tensor([width - len(c) for c in contexts], device=device)
    ids = torch.tensor([[0] * (width - len(c)) + c for c in contexts], device=device)
    slots = torch.arange(width + cont_width, device=device)
    valid = slots[None] >= pads[:, None]  # key_valid: False at each context's left padding
    positions = (slots[None, :width] - pads[:, None]).clamp(min=0)
    cache = model.new_cache(len(contexts), width + cont_width)
    last = model(ids, positions=positions, key_valid=valid[:, :width], cache=cache, last_only=True)[:, -1]

    rows = torch.tensor([q for q, choices in enumerate(continuations) for _ in choices], device=device)
    flat = [c for choices in continuations for c in choices]
    first = torch.tensor([c[0] for c in flat], device=device)
    first_logits = last.float()[rows]
    total = first_logits.gather(1, first[:, None])[:, 0] - first_logits.logsumexp(dim=-1)
    greedy = first_logits.argmax(dim=-1) == first
    if cont_width:
        cache.reorder(rows)
        fed = torch.tensor([c[:-1] + [0] * (cont_width - len(c) + 1) for c in flat], device=device)
        targets = torch.tensor([c[1:] + [0] * (cont_width - len(c) + 1) for c in flat], device=device)
        counts = torch.tensor([len(c) - 1 for c in flat], device=device)
        scored = torch.arange(cont_width, device=device)[None] < counts[:, None]
        lengths = torch.tensor([len(c) for c in contexts], device=device)[rows]
        pos = lengths[:, None] + torch.arange(cont_width, device=device)[None]
        pos = pos.clamp(max=model.config.max_seq_len - 1)  # padding past a short choice: never read
        hidden = model(fed, positions=pos, key_valid=valid[rows], cache=cache, head=False)
        step = max(1, CHUNK_LOGITS // (cont_width * model.lm_head.weight.size(0)))
        for i in range(0, len(flat), step):  # the logits of a few rows at a time
            part = slice(i, i + step)
            rest, rest_greedy = continuation_scores(model.lm_head(hidden[part]), targets[part], scored[part])
            total[part] += rest
            greedy[part] &= rest_greedy
    scores = [Score(float(s), bool(g), len(c)) for s, g, c in zip(total.tolist(), greedy.tolist(), flat)]
    out, i = [], 0
    for choices in continuations:
        out.append(scores[i : i + len(choices)])
        i += len(choices)
    return out
