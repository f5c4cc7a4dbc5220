"""fp32 linear layers on AMX's bf16 tiles (models/amx.py, kernels/amx.c): the split products against
float64 (bf16x6 as exact as PyTorch's fp32 matmul, bf16x3 to 2^-16), ragged shapes and biases, and the
context manager's contract (same logits and log-likelihoods, gradients and other dtypes left to PyTorch,
a changed weight re-packed, the layers as before on exit). Skipped on a CPU without AMX."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmforge.evaluate.loglik import score_requests
from lmforge.models import amx
from lmforge.models.gpt import GPT, GPTConfig

pytestmark = pytest.mark.skipif(not amx.available(), reason="no AMX-BF16 kernel on this machine")


def relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("shape", [(1, 32, 32), (37, 50, 23), (64, 96, 80), (100, 320, 48), (5, 64, 1000)])
def test_split_products_are_as_exact_as_fp32(shape):
    m, k, n = shape
    torch.manual_seed(0)
    x, w, b = torch.randn(m, k) * 3, torch.randn(n, k) * 0.05, torch.randn(n)
    ref = x.double() @ w.double().T + b.double()
    fp32 = relative_error(x @ w.T + b, ref)
    six = relative_error(amx.linear(x, amx.pack(w, 3), 3, n, b), ref)
    three = relative_error(amx.linear(x, amx.pack(w, 2), 2, n, b), ref)
    bf16 = relative_error((x.bfloat16() @ w.bfloat16().T).float() + b, ref)
    assert six <= 3 * fp32 + 1e-7  # fp32's own rounding: the dropped terms are 2^-24 |x w|
    assert six < 1e-6 < three < 2e-5 < bf16  # bf16x3: 2^-16; one bf16 product: 2^-8
    no_bias = amx.linear(x, amx.pack(w, 3), 3, n, None)
    assert relative_error(no_bias, ref - b.double()) <= 3 * fp32 + 1e-7


def test_weights_that_are_bf16_skip_their_zero_terms_exactly():
    """A weight that is a bf16 (as most checkpoints store them) has zero second and third terms: those
    products are skipped per 16 x 32 tile, the others kept (rows and inputs mixed here)."""
    torch.manual_seed(4)
    x, w = torch.randn(70, 200) * 3, torch.randn(48, 200) * 0.05
    w[:16] = w[:16].bfloat16().float()  # a strip of bf16 weights
    w[16:, :64] = w[16:, :64].bfloat16().float()  # the first two 32-input tiles of the others
    ref = x.double() @ w.double().T
    fp32 = relative_error(x @ w.T, ref)
    assert relative_error(amx.linear(x, amx.pack(w, 3), 3, 48, None), ref) <= 3 * fp32 + 1e-7
    assert relative_error(amx.linear(x, amx.pack(w, 2), 2, 48, None), ref) < 2e-5


def test_batched_inputs_keep_their_leading_shape():
    torch.manual_seed(1)
    x, w = torch.randn(2, 3, 40), torch.randn(24, 40)
    y = amx.linear(x, amx.pack(w, 3), 3, 24, None)
    assert y.shape == (2, 3, 24)
    torch.testing.assert_close(y, x @ w.T, rtol=1e-5, atol=1e-5)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=300, max_seq_len=32, n_layer=2, n_head=2, d_model=64)).eval()


def test_a_model_inside_gives_fp32s_logits_and_is_as_before_after(model):
    ids = torch.randint(0, 300, (3, 20))
    with torch.no_grad():
        ref = model(ids).double()
        with amx.fp32_on_amx(model) as on:
            assert on
            inside = model(ids)
        after = model(ids)
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    assert linears and all("forward" not in m.__dict__ and "_amx" not in m.__dict__ for m in linears)
    assert (inside.double() - ref).abs().max() < 1e-5 * ref.abs().max()
    assert not torch.equal(inside, after)  # the kernel ran inside (its rounding is not PyTorch's)
    torch.testing.assert_close(after.double(), ref, rtol=0, atol=0)


def test_scores_inside_equal_fp32_scores(model):
    torch.manual_seed(2)
    questions = [
        [(torch.randint(0, 300, (8,)).tolist(), torch.randint(0, 300, (n,)).tolist()) for n in (2, 3, 5)]
        for _ in range(6)
    ]
    plain = score_requests(model, questions)
    with amx.fp32_on_amx(model, "bf16x6"):
        fast = score_requests(model, questions)
    for p, f in zip(plain, fast):
        for a, b in zip(p, f):
            assert abs(a.loglik - b.loglik) < 1e-4 and a.tokens == b.tokens


def test_gradients_other_dtypes_and_changed_weights(model):
    layer = model.lm_head
    x = torch.randn(4, 64)
    with amx.fp32_on_amx(model, "bf16x3"):
        y = layer(x.requires_grad_())  # autograd: PyTorch's matmul, gradients flow
        y.sum().backward()
        assert x.grad is not None and "_amx" not in layer.__dict__
        with torch.no_grad():
            first = layer(x)
            layer.weight.mul_(2)  # in place: the packed copy is stale and is packed again
            torch.testing.assert_close(layer(x), 2 * first, rtol=1e-4, atol=1e-4)


def test_empty_inputs_and_a_trained_bias_are_left_to_pytorch():
    net = nn.Sequential(nn.Linear(40, 24))
    net[0].weight.requires_grad_(False)  # bias-only fine-tuning: the bias needs its gradient
    x = torch.randn(5, 40)
    with amx.fp32_on_amx(net):
        with torch.no_grad():
            assert net(torch.empty(0, 40)).shape == (0, 24)
        net(x).sum().backward()
    torch.testing.assert_close(net[0].bias.grad, torch.full((24,), 5.0))


def test_other_dtypes_are_left_to_pytorch():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(40, 24)).double()
    x = torch.randn(5, 40, dtype=torch.float64)
    with torch.no_grad(), amx.fp32_on_amx(net):
        y = net(x)
        assert "_amx" not in net[0].__dict__
    torch.testing.assert_close(y, x @ net[0].weight.T + net[0].bias, rtol=0, atol=0)


def test_an_unknown_precision_is_refused(model):
    with pytest.raises(ValueError, match="precision"), amx.fp32_on_amx(model, "bf16x9"):
        pass
