"""The output layer fused into the cross-entropy (``linear_cross_entropy``) against the two plain steps,
logits then ``F.cross_entropy``: the same loss and the same gradients, chunked or not, smoothed or
not; and the models' ``targets=``/``labels=`` paths, in fp32 and under bf16 autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmforge.models import losses
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.models.losses import IGNORE_INDEX, linear_cross_entropy
from lmforge.models.seq2seq import Seq2Seq, Seq2SeqConfig


def case(vocab: int, rows: int = 48, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, d, generator=g, requires_grad=True)
    w = torch.randn(vocab, d, generator=g).mul_(0.3).requires_grad_()
    y = torch.randint(0, vocab, (rows,), generator=g)
    y[::5] = IGNORE_INDEX  # padding / prompt positions count for nothing
    return h, w, y


def plain(h, w, y, smoothing=0.0, bias=None):
    z = h @ w.t() + (0 if bias is None else bias)
    return F.cross_entropy(z, y, ignore_index=IGNORE_INDEX, label_smoothing=smoothing)


@pytest.mark.parametrize("vocab", [7, 65, 1000])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("chunk_rows", [1000, 5])  # one chunk; many, the last one short
def test_value_and_gradients_equal_logits_then_cross_entropy(vocab, smoothing, chunk_rows, monkeypatch):
    monkeypatch.setattr(losses, "CHUNK_LOGITS", chunk_rows * vocab)
    h, w, y = case(vocab)
    bias = torch.randn(vocab)
    want = plain(h, w, y, smoothing, bias)
    want_h, want_w = torch.autograd.grad(want, (h, w))
    got = linear_cross_entropy(h, w, y, label_smoothing=smoothing, bias=bias)
    got_h, got_w = torch.autograd.grad(got * 3.0, (h, w))  # the upstream gradient scales both
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_h, 3.0 * want_h, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got_w, 3.0 * want_w, rtol=1e-5, atol=1e-7)


def test_nothing_counted_is_zero_not_nan():
    h, w, y = case(11)
    loss = linear_cross_entropy(h, w, torch.full_like(y, IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0
    assert not h.grad.any() and not w.grad.any()


def test_without_gradients_only_the_value_is_computed():
    h, w, y = case(65)
    with torch.no_grad():
        loss = linear_cross_entropy(h, w, y)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, plain(h, w, y).detach())


def gpt(vocab=97):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, max_seq_len=16, n_layer=2, n_head=2, d_model=32))


def test_gpt_targets_is_the_cross_entropy_of_its_logits():
    model = gpt()
    x = torch.randint(0, 97, (3, 16), generator=torch.Generator().manual_seed(1))
    y = x.roll(-1, dims=1)
    y[:, -1] = IGNORE_INDEX
    fused = model(x, targets=y)
    (grad_fused,) = torch.autograd.grad(fused, model.tok_emb.weight)
    want = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX)
    (grad_want,) = torch.autograd.grad(want, model.tok_emb.weight)  # tied: embedding + head
    torch.testing.assert_close(fused, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad_fused, grad_want, rtol=1e-5, atol=1e-7)


def test_bf16_autocast_loss_is_the_fp32_loss_within_bf16_precision():
    """The fast CPU path (bf16 autocast, fp32 master weights, the fused loss): on a fixed batch its loss
    is the fp32 loss within 1 % (bf16 keeps 8 bits of mantissa), and its gradients point the same way."""
    model = gpt()
    x = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(2))
    y = x.roll(-1, dims=1)
    want = model(x, targets=y)
    (grad_want,) = torch.autograd.grad(want, model.blocks[0].mlp.fc.weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(x, targets=y)
    (grad_got,) = torch.autograd.grad(got, model.blocks[0].mlp.fc.weight)
    assert got.dtype == torch.float32 and grad_got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-2, atol=0)
    assert F.cosine_similarity(grad_got.flatten(), grad_want.flatten(), dim=0) > 0.99


@pytest.mark.parametrize("bias", [False, True])
def test_seq2seq_labels_is_the_smoothed_cross_entropy_of_its_logits(bias):
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(
        vocab_size=53, max_seq_len=16, n_enc_layer=1, n_dec_layer=1, n_head=2, d_model=16, logits_bias=bias
    )
    model = Seq2Seq(cfg).eval()
    if bias:
        model.logits_bias.normal_()
    g = torch.Generator().manual_seed(3)
    src, tgt = torch.randint(3, 53, (2, 7), generator=g), torch.randint(3, 53, (2, 5), generator=g)
    labels = tgt.roll(-1, dims=1)
    labels[1, 3:] = IGNORE_INDEX
    want = F.cross_entropy(
        model(src, tgt).flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, label_smoothing=0.1
    )
    torch.testing.assert_close(model(src, tgt, labels=labels, label_smoothing=0.1), want)
