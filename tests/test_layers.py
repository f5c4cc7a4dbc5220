"""Each building block against a literal transcription of its formula."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.models import native
from lmforge.models.layers import (
    Block,
    CrossAttention,
    FeedForward,
    KVCache,
    MultiHeadAttention,
    RotaryEmbedding,
    SinusoidalPositions,
    SwiGLU,
    apply_rotary,
    attention_mask,
    attention_reference,
    decode_positions_and_mask,
    fused_kernels,
    make_norm,
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
    mask = attention_mask(key_valid, 6, causal=True)
    fast = scaled_dot_product_attention(q, k, v, mask)
    ref = attention_reference(q, k, v, mask)
    torch.testing.assert_close(fast[:, :, 2:], ref[:, :, 2:], atol=1e-6, rtol=1e-5)
    # the padded row attends to no padding key: changing the padded keys leaves it unchanged
    k2 = k.clone()
    k2[0, :, :2] = 100.0
    torch.testing.assert_close(scaled_dot_product_attention(q, k2, v, mask)[0, :, 2:], fast[0, :, 2:])


# Row b, query i, key j: may query i see key j? Batch row 0 starts with one padding token.
KEY_VALID = torch.tensor([[False, True, True, True], [True, True, True, True]])
CAUSAL_PADDED = torch.tensor(
    [
        [[1, 1, 1, 1], [0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 1, 1]],  # query 0 is padding: sees all, unused
        [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]],
    ]
).bool()
BIDIRECTIONAL_PADDED = torch.tensor([[[0, 1, 1, 1]] * 4, [[1, 1, 1, 1]] * 4]).bool()


def heads_by_hand(attn: MultiHeadAttention, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Q, K, V (B, H, T, D) from the fused projection, each query head with its K/V head."""
    b, t, _ = x.shape
    h, g, d = attn.n_head, attn.n_kv_head, attn.head_dim
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split([h * d, g * d, g * d], dim=-1)
    q, k, v = (y.view(b, t, -1, d).transpose(1, 2) for y in (q, k, v))
    kv_head = [i * g // h for i in range(h)]
    return q, k[:, kv_head], v[:, kv_head]


def merge_by_hand(attn: MultiHeadAttention, y: torch.Tensor) -> torch.Tensor:
    b, h, t, d = y.shape
    return y.transpose(1, 2).reshape(b, t, h * d) @ attn.proj.weight.T + attn.proj.bias


@pytest.mark.parametrize(
    ("t", "d", "upcast"), [(16, 8, True), (64, 64, True), (256, 32, True), (256, 64, False)]
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])  # fp32 under autocast: after RoPE
@pytest.mark.parametrize("masked", [False, True])
def test_bf16_training_attention_takes_the_faster_kernel(t, d, upcast, dtype, masked):
    """Training in bf16 on a CPU, short sequences and narrow heads run PyTorch's fp32 attention kernel (its
    bf16 backward is 3x slower there): output and gradients are the fp32 kernel's, rounded to bf16, also
    under autocast (which would cast the inputs back) and for queries autocast has left in fp32 (RoPE's
    fp32 tables do), with a bf16 additive mask too; long sequences with 64-wide heads stay in bf16."""
    q, k, v = (torch.randn(1, 2, t, d, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(1, 2, t, d, dtype=torch.bfloat16)
    allowed = torch.ones(t, t, dtype=torch.bool).tril()
    mask = torch.zeros(t, t, dtype=torch.bfloat16).masked_fill_(~allowed, float("-inf")) if masked else None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = scaled_dot_product_attention(q, k, v, mask, is_causal=not masked)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    if upcast:
        fp32 = (q.float(), k.float(), v.float(), None if mask is None else mask.float())
        want = F.scaled_dot_product_attention(*fp32[:3], attn_mask=fp32[3], is_causal=not masked).bfloat16()
    else:
        bf16 = (q.bfloat16(), k.bfloat16(), v.bfloat16())
        want = F.scaled_dot_product_attention(*bf16, attn_mask=mask, is_causal=not masked)
    want_grads = torch.autograd.grad(want, (q, k, v), grad)
    assert out.dtype == torch.bfloat16 and torch.equal(out, want)
    assert all(torch.equal(a, b) for a, b in zip(grads, want_grads))


@pytest.mark.parametrize("causal", [True, False])
def test_attention_masks_causal_and_bidirectional(causal):
    """Causal (decoder): query i sees keys j <= i; bidirectional (encoder): every key; both skip padding."""
    padded = CAUSAL_PADDED if causal else BIDIRECTIONAL_PADDED
    assert torch.equal(attention_mask(KEY_VALID, 4, causal=causal)[:, 0], padded)
    attn = MultiHeadAttention(d_model=16, n_head=4, n_kv_head=2, head_dim=4, bias=True, causal=causal)
    x = torch.randn(2, 4, 16)
    q, k, v = heads_by_hand(attn, x)
    unpadded = torch.ones(4, 4).tril().bool() if causal else torch.ones(4, 4).bool()
    expected = merge_by_hand(attn, attention_reference(q, k, v, unpadded))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)
    expected = merge_by_hand(attn, attention_reference(q, k, v, padded[:, None]))
    mask = attention_mask(KEY_VALID, 4, causal=causal)
    torch.testing.assert_close(attn(x, mask=mask), expected, atol=1e-5, rtol=1e-5)


def test_causal_attention_after_a_cached_prefix():
    """New queries are the last keys of the cache: chunk by chunk equals all at once (T > 1, T = 1)."""
    attn = MultiHeadAttention(d_model=16, n_head=2, n_kv_head=1, head_dim=8, bias=False, causal=True)
    x = torch.randn(1, 7, 16)
    cache = KVCache(n_layer=1, batch=1, n_kv_head=1, max_len=7, head_dim=8, dtype=torch.float32, device="cpu")
    chunks = []
    for part in (x[:, :3], x[:, 3:6], x[:, 6:]):
        cache.reserve(part.size(1))
        chunks.append(attn(part, cache=cache))
    torch.testing.assert_close(torch.cat(chunks, dim=1), attn(x), atol=1e-5, rtol=1e-5)


def test_cross_attention_is_its_formula():
    """softmax(q_i k_j / sqrt(D)) over the memory's unpadded positions j, queries from x (T != S)."""
    attn = CrossAttention(d_model=16, n_head=4, n_kv_head=2, head_dim=4, bias=True)
    x, memory = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    memory_valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    w_k, w_v = attn.kv.weight.split(8)
    b_k, b_v = attn.kv.bias.split(8)
    expected = torch.zeros(2, 3, 16)
    for b in range(2):
        m = memory[b, : int(memory_valid[b].sum())]  # padding is as if absent
        heads = []
        for h in range(4):
            rows, kv_rows = slice(4 * h, 4 * h + 4), slice(4 * (h // 2), 4 * (h // 2) + 4)
            q = x[b] @ attn.q.weight[rows].T + attn.q.bias[rows]
            k = m @ w_k[kv_rows].T + b_k[kv_rows]
            v = m @ w_v[kv_rows].T + b_v[kv_rows]
            heads.append(torch.softmax(q @ k.T / math.sqrt(4), dim=-1) @ v)
        expected[b] = torch.cat(heads, dim=-1) @ attn.proj.weight.T + attn.proj.bias
    mask = attention_mask(memory_valid, 3, causal=False)
    torch.testing.assert_close(attn(x, memory, mask), expected, atol=1e-5, rtol=1e-5)
    # the memory's K/V computed once (as for every decode step) give the same output
    torch.testing.assert_close(attn(x, attn.memory_kv(memory), mask), expected, atol=1e-5, rtol=1e-5)


def test_cross_attention_serves_groups_of_rows_from_one_memory_row():
    """Beam search keeps one memory row per source: its r beams' queries (T = 1 while decoding, or
    more) attend to it exactly as if the memory were repeated for each beam."""
    attn = CrossAttention(d_model=16, n_head=4, n_kv_head=2, head_dim=4, bias=True)
    memory = torch.randn(2, 5, 16)
    memory_valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    for t in (1, 2):
        x = torch.randn(6, t, 16)  # rows 0-2: source 0's beams, rows 3-5: source 1's
        repeated = attn(
            x,
            attn.memory_kv(memory.repeat_interleave(3, dim=0)),
            attention_mask(memory_valid.repeat_interleave(3, dim=0), t, causal=False),
        )
        shared = attn(x, attn.memory_kv(memory), attention_mask(memory_valid, t, causal=False))
        torch.testing.assert_close(shared, repeated, atol=1e-6, rtol=1e-5)


def test_grouped_query_attention_shares_kv_heads():
    attn = MultiHeadAttention(d_model=32, n_head=4, n_kv_head=2, head_dim=8, bias=False, causal=True)
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


def layer_norm_formula(x, g, b, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * g + b


def rms_norm_formula(x, g, eps):
    return x / torch.sqrt((x**2).mean(-1, keepdim=True) + eps) * g


@pytest.mark.parametrize(("kind", "bias"), [("layernorm", True), ("layernorm", False), ("rmsnorm", False)])
def test_make_norm_is_the_formula(kind, bias):
    """make_norm's LayerNorm and RMSNorm against their formulas, on inputs small enough that eps counts."""
    eps = 1e-5
    norm = make_norm(kind, 10, eps, bias)
    with torch.no_grad():
        for p in norm.parameters():
            p.uniform_(0.5, 2)
    x = 3e-3 * torch.randn(4, 10) + 1e-3  # variance ~ eps: a wrong eps shows

    def formula(eps):
        if kind == "rmsnorm":
            return rms_norm_formula(x, norm.weight, eps)
        return layer_norm_formula(x, norm.weight, norm.bias if bias else 0.0, eps)

    torch.testing.assert_close(norm(x), formula(eps))
    assert not torch.allclose(norm(x), formula(100 * eps), rtol=1e-2)  # the test sees a 100x eps


def tuned_norm(d: int) -> torch.nn.Module:
    """A LayerNorm with weights and bias far from (1, 0), so that where it sits changes the output."""
    norm = make_norm("layernorm", d, 1e-5, bias=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    return norm


def pre_norm_block(x, memory, attn, cross, mlp, attn_norm, cross_norm, mlp_norm):
    x = x + attn(attn_norm(x))
    if cross is not None:
        x = x + cross(cross_norm(x), memory)
    return x + mlp(mlp_norm(x))


def post_norm_block(x, memory, attn, cross, mlp, attn_norm, cross_norm, mlp_norm):
    x = attn_norm(x + attn(x))
    if cross is not None:
        x = cross_norm(x + cross(x, memory))
    return mlp_norm(x + mlp(x))


@pytest.mark.parametrize("with_cross", [False, True])
@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_block_residual_order(norm_position, with_cross):
    """pre: x + f(Norm(x)); post: Norm(x + f(x)), for self-attention, cross-attention and FFN in turn."""
    d = 16
    attn = MultiHeadAttention(d, n_head=2, n_kv_head=2, head_dim=8, bias=True, causal=True)
    cross = CrossAttention(d, n_head=2, n_kv_head=1, head_dim=8, bias=True) if with_cross else None
    mlp = FeedForward(d, 4 * d, bias=True)
    norms = [tuned_norm(d), tuned_norm(d) if with_cross else None, tuned_norm(d)]
    block = Block(attn, mlp, norms[0], norms[2], norm_position, cross, norms[1])
    x, memory = torch.randn(2, 5, d), torch.randn(2, 7, d)
    expected = {
        "pre": pre_norm_block(x, memory, attn, cross, mlp, *norms),
        "post": post_norm_block(x, memory, attn, cross, mlp, *norms),
    }
    out = block(x, memory)
    torch.testing.assert_close(out, expected[norm_position])
    other = "post" if norm_position == "pre" else "pre"
    assert not torch.allclose(out, expected[other], atol=1e-2)


def test_feed_forward_formulas():
    x = torch.randn(2, 3, 8)
    mlp = FeedForward(8, 32, bias=True, activation="gelu_tanh")
    h = x @ mlp.fc.weight.T + mlp.fc.bias
    gelu = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    torch.testing.assert_close(mlp(x), gelu @ mlp.proj.weight.T + mlp.proj.bias)
    mlp.act = FeedForward(8, 32, bias=True, activation="relu").act  # max(0, h): the paper's FFN
    torch.testing.assert_close(mlp(x), h.clamp(min=0) @ mlp.proj.weight.T + mlp.proj.bias)
    glu = SwiGLU(8, 16, bias=False)
    gate, up = x @ glu.gate_up.weight[:16].T, x @ glu.gate_up.weight[16:].T
    torch.testing.assert_close(glu(x), (gate * torch.sigmoid(gate) * up) @ glu.proj.weight.T)
    assert torch.allclose(F.silu(gate), gate * torch.sigmoid(gate))


def test_sinusoidal_positions_are_the_papers_table():
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...): the same values, sin half first."""
    d, table = 8, SinusoidalPositions(8, 50)
    pos, i = 37, 3
    angle = pos / 10000 ** (2 * i / d)
    assert table(torch.tensor(pos))[i].item() == pytest.approx(math.sin(angle), abs=1e-6)
    assert table(torch.tensor(pos))[d // 2 + i].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert table(torch.tensor(0)).tolist() == [0.0] * (d // 2) + [1.0] * (d // 2)


def test_kv_cache_reorder_keeps_the_chosen_rows():
    cache = KVCache(n_layer=2, batch=3, n_kv_head=1, max_len=4, head_dim=2, dtype=torch.float32, device="cpu")
    cache.k[:, :, 0, 0, 0] = torch.tensor([10.0, 11.0, 12.0])
    cache.reserve(1)  # slot 0 filled
    cache.reorder(torch.tensor([2, 2, 0]))  # same rows count: the filled slots copied in place
    assert cache.k[1, :, 0, 0, 0].tolist() == [12.0, 12.0, 10.0]
    cache.reorder(torch.tensor([2, 2, 0, 1]))  # another count: a new buffer
    assert cache.k[1, :, 0, 0, 0].tolist() == [10.0, 10.0, 12.0, 12.0] and cache.v.size(1) == 4


def test_kv_cache_copy_rows_copies_the_filled_slots():
    cache = KVCache(n_layer=2, batch=3, n_kv_head=1, max_len=4, head_dim=2, dtype=torch.float32, device="cpu")
    cache.k[:, :, 0, :, 0] = torch.arange(12.0).view(1, 3, 4)
    cache.v.copy_(-cache.k)
    cache.reserve(2)  # slots 0-1 filled
    cache.copy_rows(torch.tensor([0]), torch.tensor([2]))
    assert cache.k[1, :, 0, :, 0].tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 10, 11]]
    assert torch.equal(cache.v, -cache.k)


def test_kv_cache_copy_rows_in_c_is_the_gather_and_scatter(monkeypatch):
    """``copy_rows``' one-pass C copy (kernels/decode.c) leaves the cache exactly as PyTorch's gather and
    scatter do: every layer and head, the filled slots only, other rows untouched."""
    from lmforge.models import layers, native

    caches, ran, real = [], [], layers._copy_rows_natively
    for in_c in (True, False):
        shape = dict(n_layer=3, batch=6, n_kv_head=2, max_len=7, head_dim=5)
        cache = KVCache(**shape, dtype=torch.float32, device="cpu")
        cache.k.copy_(torch.randn(cache.k.shape, generator=torch.Generator().manual_seed(1)))
        cache.v.copy_(-cache.k)
        cache.reserve(4)
        step = (lambda *a: ran.append(real(*a)) or ran[-1]) if in_c else (lambda *a: False)
        monkeypatch.setattr(layers, "_copy_rows_natively", step)
        cache.copy_rows(torch.tensor([0, 0, 3]), torch.tensor([1, 4, 5]))
        caches.append(cache)
    assert ran == [native.library("decode") is not None]  # the C copy ran where it is built
    assert torch.equal(caches[0].k, caches[1].k) and torch.equal(caches[0].v, caches[1].v)
    assert torch.equal(caches[0].k[:, 4, :, :4], caches[0].k[:, 0, :, :4])
    assert not torch.equal(caches[0].k[:, 4, :, 4:], caches[0].k[:, 0, :, 4:])  # unfilled slots stay


def test_kv_cache_writes_both_ways():
    cache = KVCache(n_layer=2, batch=1, n_kv_head=2, max_len=6, head_dim=4, dtype=torch.float32, device="cpu")
    k1, v1 = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    assert cache.reserve(3) == 0 and cache.length == 3
    k, v = cache.update(1, k1, v1)
    assert k.shape == (1, 2, 3, 4) and torch.equal(k, k1) and torch.equal(v, v1)
    k2 = torch.randn(1, 2, 1, 4)
    k, _ = cache.update(1, k2, k2, index=torch.tensor([3]))
    assert k.shape == (1, 2, 6, 4) and torch.equal(k[:, :, 3:4], k2) and torch.equal(k[:, :, :3], k1)
    assert cache.k[0].abs().sum() == 0  # other layers untouched
    with pytest.raises(ValueError, match="holds 6 positions"):
        cache.reserve(4)


def test_decode_positions_and_mask():
    """New tokens continue the cache: positions after it; a fixed-shape cache hides its unwritten slots."""
    cache = KVCache(n_layer=1, batch=2, n_kv_head=1, max_len=5, head_dim=4, dtype=torch.float32, device="cpu")
    cache.reserve(2)
    positions, mask = decode_positions_and_mask(torch.zeros(2, 2, dtype=torch.long), cache=cache)
    assert positions.tolist() == [[2, 3]] * 2 and mask is None and cache.length == 4
    token = torch.zeros(2, 1, dtype=torch.long)
    positions, mask = decode_positions_and_mask(token, cache=cache, cache_index=torch.tensor([2]))
    assert positions.tolist() == [[2]] * 2 and cache.length == 4
    assert mask[:, 0].tolist() == [[[True, True, True, False, False]]] * 2
    key_valid = torch.tensor([[False, True, True, True, True], [True] * 5])
    _, mask = decode_positions_and_mask(
        token, key_valid=key_valid, cache=cache, cache_index=torch.tensor([3])
    )
    assert mask[:, 0].tolist() == [[[False, True, True, True, False]], [[True, True, True, True, False]]]


@pytest.mark.skipif(native.library("fused") is None, reason="no native build of kernels/fused.c")
def test_inference_paths_are_the_formulas():
    """Without gradients the element-wise layers run in C (kernels/fused.c), K/V heads are read in place
    by grouped attention and the residual sum lands in the sub-layer's output: the same values."""
    torch.manual_seed(5)
    with torch.no_grad():
        assert fused_kernels(torch.zeros(1)) is not None
        x = torch.randn(3, 7, 40) * 3
        norm = make_norm("rmsnorm", 40, 1e-5, bias=False)
        norm.weight.uniform_(0.5, 1.5)
        r = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
        torch.testing.assert_close(norm(x), r, rtol=1e-6, atol=1e-6)
        qkv = torch.randn(2, 5, 6 * 16)  # q as a strided view of a fused projection, as attention has it
        q = qkv[..., : 4 * 16].view(2, 5, 4, 16).transpose(1, 2)
        rope = RotaryEmbedding(16, 32)
        cos, sin = rope(torch.tensor([[3, 4, 5, 6, 7], [0, 1, 2, 9, 10]]))
        half = torch.cat([-q[..., 8:], q[..., :8]], -1)
        torch.testing.assert_close(apply_rotary(q, cos, sin), q * cos + half * sin, rtol=1e-6, atol=1e-6)
        glu = SwiGLU(40, 24, bias=False)
        gate, up = x @ glu.gate_up.weight[:24].T, x @ glu.gate_up.weight[24:].T
        torch.testing.assert_close(glu(x), (gate * torch.sigmoid(gate) * up) @ glu.proj.weight.T)
        attn = MultiHeadAttention(d_model=40, n_head=4, n_kv_head=2, head_dim=10, bias=False, causal=True)
        block = Block(attn, glu, make_norm("rmsnorm", 40, 1e-5, False), make_norm("rmsnorm", 40, 1e-5, False))
        fast = block(x)
    slow = block(x)  # with gradients: PyTorch's operations, repeat_kv, a new tensor for each sum
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-5, atol=1e-5)
