"""The loss formulas, each in one place: the models, the training objectives and evaluation call these.

Cross-entropy of a categorical prediction: CE = -1/N sum_i log softmax(z_i)[y_i] over the N targets that
are not ``ignore_index``; the same CE fused with the output layer z = h W^T (``linear_cross_entropy``:
the logits never exist whole); perplexity PPL = exp(mean NLL); knowledge distillation (Hinton et al.
2015): a mix of that CE and T^2 KL(softmax(t/T) || softmax(z/T)) to a teacher's logits t.
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


# Rows of logits per chunk of ``linear_cross_entropy``: about this many logits (64 MiB in fp32) at once.
CHUNK_LOGITS = 1 << 24


class _LinearCrossEntropy(torch.autograd.Function):
    """CE of z = h W^T, chunk by chunk of rows, its gradient computed on the way (a training step
    needs both): with p = softmax(z) and the smoothed target q = (1 - ε) onehot(y) + ε/C,
    d CE_i / d z_i = p_i - q_i, so dh = (p - q) W and dW = (p - q)^T h, each chunk's logits
    turned into p - q in place. Neither the full logits (N, C) nor their gradient is ever stored:
    for a 50k vocabulary that is most of a CPU step's memory traffic."""

    @staticmethod
    def forward(
        ctx,
        h: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        ignore_index: int,
        smoothing: float,
        grads: bool,
    ):
        dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else None
        with torch.autocast(h.device.type, enabled=False):
            x, w = (h, weight) if dtype is None else (h.to(dtype), weight.to(dtype))
            counted = targets != ignore_index
            n = counted.sum()
            total = torch.zeros((), device=h.device)
            grad_h = torch.empty_like(x) if grads else None
            grad_w = torch.zeros_like(weight, dtype=torch.float32) if grads else None
            step = max(1, CHUNK_LOGITS // weight.size(0))
            for start in range(0, len(x), step):
                rows = slice(start, start + step)
                z = (x[rows] @ w.t()).float()
                if bias is not None:
                    z += bias
                y, keep = targets[rows].clamp(min=0)[:, None], counted[rows]
                log_z = z.logsumexp(dim=-1)
                nll = log_z - z.gather(1, y)[:, 0]
                if smoothing:
                    nll = (1 - smoothing) * nll + smoothing * (log_z - z.mean(dim=-1))
                total += nll[keep].sum()
                if not grads:
                    continue
                g = z.sub_(log_z[:, None]).exp_()  # p, in the logits' memory
                g.scatter_add_(1, y, torch.full_like(y, -(1 - smoothing), dtype=g.dtype))
                if smoothing:
                    g.sub_(smoothing / weight.size(0))
                g.mul_(keep[:, None])
                g = g.to(w.dtype)
                grad_h[rows] = g @ w
                grad_w.addmm_(g.t(), x[rows]) if w.dtype == torch.float32 else grad_w.add_(g.t() @ x[rows])
            scale = 1 / n.clamp(min=1)
            if grads:
                ctx.save_for_backward(grad_h, grad_w, scale)
                ctx.dtypes = h.dtype, weight.dtype
            return total * scale

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad_h, grad_w, scale = ctx.saved_tensors
        factor = grad_out * scale
        grads = (grad_h * factor).to(ctx.dtypes[0]), (grad_w * factor).to(ctx.dtypes[1])
        return *grads, None, None, None, None, None


def linear_cross_entropy(
    h: Tensor,
    weight: Tensor,
    targets: Tensor,
    ignore_index: int = IGNORE_INDEX,
    label_smoothing: float = 0.0,
    bias: Tensor | None = None,
) -> Tensor:
    """``cross_entropy(h @ weight.T + bias, targets, ...)`` (mean over the counted targets; 0 when none
    counts) for hidden states h (..., d), an output layer ``weight`` (C, d) and an optional fixed
    ``bias`` (C,), without materialising the logits: the same value and gradients (the bias gets none)
    as the two steps, at a fraction of the memory traffic."""
    grads = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    flat = h.reshape(-1, h.size(-1))
    bias = None if bias is None else bias.reshape(-1).float()
    return _LinearCrossEntropy.apply(
        flat, weight, bias, targets.reshape(-1), ignore_index, label_smoothing, grads
    )


def head_cross_entropy(
    h: Tensor,
    head: torch.nn.Module,
    targets: Tensor,
    label_smoothing: float = 0.0,
    bias: Tensor | None = None,
) -> Tensor:
    """CE of the output layer's logits head(h) (+ a fixed ``bias``): fused (``linear_cross_entropy``)
    for a plain bias-free ``nn.Linear``; an adapted head (LoRA) computes its logits first."""
    if type(head) is torch.nn.Linear and head.bias is None:
        return linear_cross_entropy(h, head.weight, targets, label_smoothing=label_smoothing, bias=bias)
    logits = head(h) if bias is None else head(h) + bias
    return cross_entropy(logits, targets, label_smoothing=label_smoothing)


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
