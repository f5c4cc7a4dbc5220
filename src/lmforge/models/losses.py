"""The loss formulas, each in one place: the models, the training objectives and evaluation call these.

Cross-entropy of a categorical prediction: CE = -1/N sum_i log softmax(z_i)[y_i] over the N targets that
are not ``ignore_index``; perplexity PPL = exp(mean NLL).
"""

from __future__ import annotations

import math

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
