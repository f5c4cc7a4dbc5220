"""The loss formulas, each in one place: the models, the training objectives and evaluation call these.

Cross-entropy of a categorical prediction: CE = -1/N sum_i log softmax(z_i)[y_i] over the N targets that
are not ``ignore_index``; perplexity PPL = exp(mean NLL); knowledge distillation (Hinton et al. 2015):
a mix of that CE and T^2 KL(softmax(t/T) || softmax(z/T)) to a teacher's logits t.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100  # targets with this value (padding, prompt tokens, unlabelled positions) are skipped


def cross_entropy(
    logits: Tensor,
    targets: Tensor,
    ignore_index: int = IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """-log p(target) from logits (..., C) and targets (...), averaged ("mean") or summed ("sum") over the
    targets that count; computed in fp32 whatever the logits' dtype (bf16 log-softmax loses digits).

    ``label_smoothing`` ε (Szegedy et al.; the Transformer's 0.1): the target distribution is
    (1 - ε) on the label plus ε/C on every class, so the loss is (1 - ε)·CE + ε·mean_c(-log p_c).
    """
    return F.cross_entropy(
        logits.flatten(0, -2).float(),
        targets.flatten(),
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )


def perplexity(mean_nll: float) -> float:
    """exp(mean negative log-likelihood in nats); inf when that overflows (a diverged model)."""
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return math.inf


def distillation(
    logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    temperature: float = 2.0,
    alpha: float = 0.5,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """alpha * CE(z, y) + (1 - alpha) * T^2 * KL(p_T || q_T), averaged over the counted targets, with
    p_T = softmax(t / T) the teacher's and q_T = softmax(z / T) the student's softened distributions
    (Hinton et al.): the T^2 keeps the soft term's gradients the size of the hard term's as T grows.
    Logits (..., C) of student and teacher, targets (...); in fp32."""
    counted = (targets != ignore_index).flatten()
    z = logits.flatten(0, -2).float()[counted] / temperature
    t = teacher_logits.flatten(0, -2).float()[counted] / temperature
    log_p, log_q = t.log_softmax(dim=-1), z.log_softmax(dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean() if len(z) else z.sum()
    hard = cross_entropy(logits, targets, ignore_index) if alpha else torch.zeros((), device=logits.device)
    return alpha * hard + (1 - alpha) * temperature**2 * kl
