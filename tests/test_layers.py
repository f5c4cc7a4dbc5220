"""Each building block against a literal transcription of its formula."""

import math

import torch
import torch.nn.functional as F

from lmforge.models.layers import (
    GeluMLP,
    KVCache,
    MultiHeadAttention,
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    apply_rotary,
    attention_mask,
    attention_reference,
    repeat_kv,
    scaled_dot_product_attention,
)

torch.manual_seed(0)


def test_attention_reference_is_the_formula():
    q, k, v = torch.randn(3, 5, 8), torch.randn(3, 7, 8), torch.randn(3, 7, 4)
    out = attention_reference(q, k, v)
    for b in range(3):
        for i in range(5):
            w = [math.exp(float(q[b, i] @ k[b, j]) / math.sqrt(8)) for j in range(7)]
            expected = sum(w[j] * v[b, j] for j in range(7)) / sum(w)
            torch.testing.assert_close(out[b, i], expected, atol=1e-5, rtol=1e-5)


def test_fast_attention_matches_reference_causal_and_padded():
    q, k, v = (torch.randn(2, 4, 6, 16) for _ in range(3))
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    torch.testing.assert_close(
        scaled_dot_product_attention(q, k, v, is_causal=True), attention_reference(q, k, v, causal)
    )
    key_valid = torch.tensor([[False, False, True, True, True, True], [True] * 6])
    mask = attention_mask(key_valid, 6)
    fast = scaled_dot_product_attention(q, k, v, mask)
    ref = attention_reference(q, k, v, mask)
    torch.testing.assert_close(fast[:, :, 2:], ref[:, :, 2:], atol=1e-6, rtol=1e-5)
    # the padded row attends to no padding key: changing the padded keys leaves it unchanged
    k2 = k.clone()
    k2[0, :, :2] = 100.0
    torch.testing.assert_close(scaled_dot_product_attention(q, k2, v, mask)[0, :, 2:], fast[0, :, 2:])


def test_grouped_query_attention_shares_kv_heads():
    attn = MultiHeadAttention(d_model=32, n_head=4, n_kv_head=2, head_dim=8, bias=False)
    x = torch.randn(2, 5, 32)
    q, k, v = attn.qkv(x).split([32, 16, 16], dim=-1)
    q = q.view(2, 5, 4, 8).transpose(1, 2)
    k = k.view(2, 5, 2, 8).transpose(1, 2)
    v = v.view(2, 5, 2, 8).transpose(1, 2)
    heads = []
    for h in range(4):  # query head h uses key/value head h // 2
        heads.append(attention_reference(q[:, h], k[:, h // 2], v[:, h // 2], torch.ones(5, 5).tril().bool()))
    expected = attn.proj(torch.stack(heads, 1).transpose(1, 2).reshape(2, 5, 32))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)
    assert repeat_kv(k, 2).shape == (2, 4, 5, 8)


def test_rotary_gives_relative_positions():
    rope = RotaryEmbedding(head_dim=16, max_seq_len=64)
    q, k = torch.randn(16), torch.randn(16)

    def score(m, n):
        cos_m, sin_m = rope(torch.tensor([[m]]))
        cos_n, sin_n = rope(torch.tensor([[n]]))
        return float(apply_rotary(q, cos_m, sin_m).flatten() @ apply_rotary(k, cos_n, sin_n).flatten())

    assert abs(score(5, 2) - score(40, 37)) < 1e-4  # only m - n matters
    assert abs(score(5, 2) - score(5, 3)) > 1e-3
    # a rotation keeps the norm
    cos, sin = rope(torch.tensor([[7]]))
    torch.testing.assert_close(apply_rotary(q, cos, sin).norm(), q.norm())


def test_norms_are_their_formulas():
    x = torch.randn(3, 10)
    rms = RMSNorm(10, eps=1e-6)
    with torch.no_grad():
        rms.weight.uniform_(0.5, 2)
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * rms.weight
    torch.testing.assert_close(rms(x), expected)
    ln = torch.nn.LayerNorm(10)
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(ln(x), (x - mean) / torch.sqrt(var + 1e-5) * ln.weight + ln.bias)


def test_feed_forward_formulas():
    x = torch.randn(2, 3, 8)
    mlp = GeluMLP(8, 32, bias=True, approximate="tanh")
    h = x @ mlp.fc.weight.T + mlp.fc.bias
    gelu = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    torch.testing.assert_close(mlp(x), gelu @ mlp.proj.weight.T + mlp.proj.bias)
    glu = SwiGLU(8, 16, bias=False)
    gate, up = x @ glu.gate_up.weight[:16].T, x @ glu.gate_up.weight[16:].T
    torch.testing.assert_close(glu(x), (gate * torch.sigmoid(gate) * up) @ glu.proj.weight.T)
    assert torch.allclose(F.silu(gate), gate * torch.sigmoid(gate))


def test_kv_cache_writes_both_ways():
    cache = KVCache(n_layer=2, batch=1, n_kv_head=2, max_len=6, head_dim=4, dtype=torch.float32, device="cpu")
    k1, v1 = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    k, v = cache.update(1, k1, v1)
    assert k.shape == (1, 2, 3, 4) and torch.equal(k, k1) and torch.equal(v, v1)
    cache.length = 3
    k2 = torch.randn(1, 2, 1, 4)
    k, _ = cache.update(1, k2, k2, index=torch.tensor([3]))
    assert k.shape == (1, 2, 6, 4) and torch.equal(k[:, :, 3:4], k2) and torch.equal(k[:, :, :3], k1)
    assert cache.k[0].abs().sum() == 0  # other layers untouched
