"""Weight-only quantization: each scheme's round trip against its formula and error bound, the integer
matmuls against the float reference, and ``lmforge quantize`` folders that load and generate."""

import json

import pytest
import torch
from torch import nn

from conftest import uncached_greedy
from lmforge.cli import main
from lmforge.config import ConfigError
from lmforge.errors import LmforgeError
from lmforge.infer import cpu
from lmforge.infer.config import QuantizeConfig
from lmforge.infer.engine import Engine
from lmforge.infer.generate import generate_ids
from lmforge.infer.quantize import quantize_folder
from lmforge.infer.sampling import GenerationConfig, SamplingParams
from lmforge.models import native, quant
from lmforge.models.io import load_model
from lmforge.models.quant import (
    KERNEL_ROWS,
    Int4Linear,
    Int8Linear,
    dequantize_int4,
    gptq_int4,
    int4_levels,
    layer_group,
    native_int8_linear,
    pack_nibbles,
    quantize_int4,
    quantize_int8,
    unpack_nibbles,
)
from test_engine import PROMPTS, run

pytestmark = pytest.mark.usefixtures("one_thread")


def weights(rows: int = 48, cols: int = 128) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(rows, cols, generator=g)
    w[3, 7] = 9.0  # an outlier: its row's scale grows, the others' do not
    return w


def test_int8_round_trip_is_the_formula_within_half_a_step():
    w = weights()
    q, s = quantize_int8(w)
    assert q.dtype == torch.int8 and s.shape == (48,)
    torch.testing.assert_close(s, w.abs().amax(dim=1) / 127)
    assert torch.equal(q, (w / s[:, None]).round().clamp(-127, 127).to(torch.int8))
    assert q[3, 7] == 127 and s[3] > 2 * s[4]  # the outlier's row only
    err = (w - q.float() * s[:, None]).abs()
    assert (err <= s[:, None] / 2 + 1e-6).all()


def squared_error(groups: torch.Tensor, s: torch.Tensor, z: torch.Tensor | float = 0.0) -> torch.Tensor:
    """sum (w - ŵ)^2 per group of the int4 grid (q - 8) s + z, s and z stored in bf16."""
    s = s.bfloat16().float()[..., None]
    z = z.bfloat16().float()[..., None] if isinstance(z, torch.Tensor) else z
    return ((int4_levels(groups, s, z) - 8) * s + z - groups).square().sum(-1)


@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_round_trip_is_the_formula_within_half_a_step(symmetric):
    w = weights()
    q, s, z = quantize_int4(w, 32, symmetric)
    groups = w.view(48, 4, 32)
    assert torch.equal(s, s.bfloat16().float()) and torch.equal(z, z.bfloat16().float())  # as stored
    if symmetric:  # the scale of least squared error among a * max|w| / 7, a in [0.5, 1]
        top = groups.abs().amax(-1) / 7
        assert ((s >= 0.49 * top) & (s <= 1.01 * top)).all() and (s < 0.99 * top).any()
        assert torch.equal(z, torch.zeros_like(z))
        expected = int4_levels(groups, s[..., None], 0)
        for a in (0.5, 0.7, 0.9, 1.0):  # no candidate of the search does better
            assert (squared_error(groups, s) <= squared_error(groups, a * top)).all()
    else:  # ŵ = q s + m: never worse than the min/max grid, and better on most groups
        expected = int4_levels(groups, s[..., None], z[..., None])
        low = groups.amin(-1)
        step = (groups.amax(-1) - low) / 15
        err, minmax = squared_error(groups, s, z), squared_error(groups, step, low + 8 * step)
        assert (err <= minmax).all() and (err < 0.95 * minmax).float().mean() > 0.5
    assert torch.equal(q.view(48, 4, 32).float(), expected) and int(q.max()) <= 15
    w_hat = dequantize_int4(q, s, z)
    # within the grid's range, every weight is within half a step: [-8.5 s, 7.5 s], or [m - s/2, m + 15.5 s]
    first = -8 * s if symmetric else z - 8 * s
    inside = (groups >= (first - s / 2)[..., None]) & (groups <= (first + 15.5 * s)[..., None])
    assert (
        (w - w_hat).abs().view(48, 4, 32)[inside] <= (s[..., None] / 2 + 1e-6).expand_as(groups)[inside]
    ).all()
    assert torch.equal(unpack_nibbles(pack_nibbles(q)), q)


def test_asymmetric_int4_keeps_a_4_bit_grid_exactly():
    """Weights that already sit on a 4-bit grid (a Q4_1 GGUF's: levels 0..15 from each block's min to
    its max) whose step and zero point bf16 holds come back exactly: the min/max grid is kept."""
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (48, 128), generator=g, dtype=torch.uint8)
    q[:, 0::32], q[:, 1::32] = 0, 15  # every group spans the whole grid
    s = (torch.rand(48, 4, generator=g) * 0.01 + 1e-3).bfloat16().float()
    z = (torch.randn(48, 4, generator=g) * 0.02).bfloat16().float()
    on_grid = dequantize_int4(q, s, z)
    assert torch.equal(dequantize_int4(*quantize_int4(on_grid, 32, False)), on_grid)


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_moves_the_layer_outputs_less_than_rounding(symmetric):
    """On correlated inputs X, passing each column's rounding error on (GPTQ) leaves the outputs X ŵ^T
    much closer to X w^T than rounding every weight alone; with uncorrelated inputs (H diagonal) there
    is nothing to pass on and GPTQ is exactly ``quantize_int4``."""
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(256, 256, generator=g) / 16
    x = torch.randn(2048, 256, generator=g) @ mix + 0.3 * torch.randn(2048, 256, generator=g)
    w = torch.randn(96, 256, generator=g) * 0.05
    out_error = lambda w_hat: (x @ (w - w_hat).T).square().sum()  # noqa: E731
    rounded = dequantize_int4(*quantize_int4(w, 64, symmetric))
    assert out_error(dequantize_int4(*gptq_int4(w, x.T @ x, 64, symmetric, damp=0.01))) < 0.7 * out_error(
        rounded
    )
    for got, want in zip(gptq_int4(w, torch.eye(256), 64, symmetric), quantize_int4(w, 64, symmetric)):
        assert torch.equal(got, want)


def test_gptq_takes_groups_wider_than_its_block():
    w = weights(32, 512)
    x = torch.randn(1024, 512, generator=torch.Generator().manual_seed(1))
    q, s, _ = gptq_int4(w, x.T @ x, 256, False)
    assert s.shape == (32, 2) and int(q.max()) <= 15


def test_int4_folders_with_fp32_scales_load_as_they_were_saved():
    """Folders written before scales and zero points became bf16 hold fp32 ones: loading keeps them."""
    layer = Int4Linear.from_linear(nn.Linear(128, 48, bias=False), 32, False)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    state["scale"] = state["scale"].float() * (1 + 1e-3)  # not a bf16 value any more
    state["zero"] = state["zero"].float() + 1e-5
    fresh = Int4Linear(128, 48, False, 32)
    fresh.load_state_dict(state)
    assert fresh.scale.dtype == torch.float32 and torch.equal(fresh.scale, state["scale"])
    q = unpack_nibbles(state["qweight"])
    assert torch.equal(fresh.dequantized(), dequantize_int4(q, state["scale"], state["zero"]))


def test_asymmetric_int4_is_finer_on_skewed_weights():
    """Weights of one sign use half a symmetric grid; the zero point spends all 16 levels on them."""
    w = weights().abs()
    err = {sym: (w - dequantize_int4(*quantize_int4(w, 32, sym))).abs().mean() for sym in (True, False)}
    assert err[False] < 0.6 * err[True]


@pytest.mark.parametrize("bits", [8, 4])
def test_integer_matmul_matches_the_float_reference(bits, monkeypatch):
    """Decode-sized inputs (PyTorch's integer kernel, bf16 activations) give x ŵᵀ + b to bf16 precision;
    longer ones (dequantized weights) exactly; both within the bound the weight error allows."""
    monkeypatch.setattr(quant, "native_int8", lambda: None)  # lmforge's kernel: the next test
    torch.manual_seed(0)
    linear = nn.Linear(128, 48)
    with torch.no_grad():
        linear.weight.copy_(weights() * 0.1)
    layer = Int8Linear.from_linear(linear) if bits == 8 else Int4Linear.from_linear(linear, 32, False)
    w_hat = layer.dequantized()
    for rows in (5, KERNEL_ROWS + 8):
        x = torch.randn(1, rows, 128)
        with torch.no_grad():
            y, exact = layer(x), linear(x)
            reference = x @ w_hat.T + linear.bias
            bf16 = x.bfloat16().float() @ w_hat.T + linear.bias
        if rows <= KERNEL_ROWS:
            torch.testing.assert_close(y, bf16, atol=0.02, rtol=0.01)
            assert (y - reference).abs().max() > 0  # the activations were rounded to bf16
        else:
            torch.testing.assert_close(y, reference, atol=1e-4, rtol=1e-4)
        bound = x.abs() @ (linear.weight - w_hat).abs().T.detach() + (0.05 if rows <= KERNEL_ROWS else 1e-4)
        assert ((y - exact).abs() <= bound).all()
        assert (y - exact).abs().max() > 0  # quantized, not a float copy


needs_vnni = pytest.mark.skipif(quant.native_int8() is None, reason="no AVX512-VNNI kernel on this machine")


@needs_vnni
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(48, 128, True), (37, 50, False), (5, 1536, True)])
def test_native_int8_kernel_is_the_float_product(shape, dtype):
    """lmforge's VNNI kernel: x split into three int8 terms leaves ~6e-8 max|x| of x, so y = x ŵᵀ + b to
    fp32 precision (1e-5 of the largest output) at every row count up to KERNEL_ROWS, shapes that fill
    no block of 16 outputs or 16 inputs, a bias or none, an outlier column; bf16 in and out: the exact
    product of the bf16 inputs, rounded once."""
    out_features, in_features, bias = shape
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features, bias=bias)
    layer = Int8Linear.from_linear(linear)
    w_hat = layer.dequantized().double()
    for rows in (1, 2, 3, 17, KERNEL_ROWS):
        x = torch.randn(1, rows, in_features)
        x[..., 0] *= 40
        x = x.to(dtype)
        with torch.no_grad():
            y = layer(x)
        reference = x.double() @ w_hat.T + (linear.bias.double() if bias else 0)
        assert y.dtype == dtype and y.shape == (1, rows, out_features)
        if dtype == torch.float32:
            assert (y.double() - reference).abs().max() <= 1e-5 * reference.abs().max()
        else:  # one rounding of the exact result: within half a bf16 step (2^-8 relative) of it
            assert ((y.double() - reference).abs() <= reference.abs() * 2**-8 + 1e-6).all()


@needs_vnni
def test_native_int8_kernel_leaves_non_finite_inputs_and_gradients_to_pytorch():
    """An inf in x: the kernel declines (its scale would be inf) and PyTorch's path gives inf/nan as a
    float matmul would; an x that needs a gradient takes the dequantized (differentiable) path."""
    layer = Int8Linear.from_linear(nn.Linear(32, 16, bias=False))
    x = torch.randn(1, 32)
    x[0, 3] = float("inf")
    assert native_int8_linear(x, layer._vnni(), 16) is None
    with torch.no_grad():
        assert not layer(x).isfinite().all()
    x = torch.randn(2, 32, requires_grad=True)
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, layer.dequantized().sum(0).expand(2, 32))


@needs_vnni
def test_int8_llama_decodes_each_step_in_one_native_call_as_pytorch_does(lmf_llama_dir, monkeypatch):
    """An int8 Llama-family model in fp32: the engine's decode steps run in ``lmforge_int8_decode``
    (norms, RoPE, grouped-query attention over each row's own cache length, SwiGLU, residuals in C)
    and give the logits of the PyTorch forward over the whole sequence (to 1e-4) and its greedy tokens,
    with requests joining at different steps and finishing at different lengths (rows move slots)."""
    model, _ = load_model(lmf_llama_dir)
    quant.quantize_model(model, quant.QuantSpec(bits=8))
    calls, step = [], cpu.Int8Decoder.__call__

    def counted(self, tokens, positions, cache):
        logits = step(self, tokens, positions, cache)
        calls.append((len(tokens), logits))
        return logits

    monkeypatch.setattr(cpu.Int8Decoder, "__call__", counted)
    greedy = [SamplingParams(max_tokens=n, temperature=0) for n in (12, 5, 9, 7, 10)]
    arrivals = {0: [(PROMPTS[0], greedy[0])], 2: [(PROMPTS[1], greedy[1]), (PROMPTS[2], greedy[2])]}
    arrivals[6] = [(PROMPTS[3], greedy[3]), (PROMPTS[4], greedy[4])]
    served = run(Engine(model, max_batch=4), arrivals)
    expected = [uncached_greedy(model, p, g.max_tokens) for p, g in zip(PROMPTS, greedy)]
    assert [tokens for tokens, _, _ in served] == expected
    assert len(calls) >= 11 and max(rows for rows, _ in calls) == 4  # every decode step, up to 4 rows
    # one step's logits against the forward over the whole sequence
    engine = Engine(model, max_batch=2)
    engine.add_request(PROMPTS[0], greedy[0])
    engine.add_request(PROMPTS[3], greedy[0])
    engine.step()
    sequences = [[*r.prompt, r.last] for r in engine.running]
    engine.step()
    with torch.no_grad():
        reference = torch.stack([model(torch.tensor([s]))[0, -1] for s in sequences])
    torch.testing.assert_close(calls[-1][1], reference, atol=1e-4, rtol=1e-4)


@needs_vnni
def test_native_int8_layer_keeps_pytorchs_contract():
    """A wrong input width raises as F.linear does (the kernel would read past the row); layers made
    and run in inference mode work (their tensors have no version counter); a scale or bias replaced
    by a new tensor is seen (the kernel's copy is remade)."""
    layer = Int8Linear.from_linear(nn.Linear(64, 32))
    with torch.no_grad(), pytest.raises(RuntimeError):
        layer(torch.randn(1, 100))
    with torch.inference_mode():
        made = Int8Linear.from_linear(nn.Linear(64, 32))
        x = torch.randn(2, 64)
        torch.testing.assert_close(made(x), x @ made.dequantized().T + made.bias, atol=1e-5, rtol=1e-5)
    x = torch.randn(3, 64)
    with torch.no_grad():
        before = layer(x)
        layer.scale = layer.scale * 2
        layer.bias = nn.Parameter(layer.bias * 2)
        torch.testing.assert_close(layer(x), 2 * before, atol=1e-5, rtol=1e-5)


def llama_with_biases() -> nn.Module:
    """A Llama-family GPT whose linear layers have biases (as Qwen's attention does), int8, 3:1 GQA."""
    from lmforge.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    cfg = GPTConfig(
        vocab_size=97, max_seq_len=64, n_layer=2, n_head=6, n_kv_head=2, d_model=48, d_ff=80,
        pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=True, init_std=0.3,
    )  # fmt: skip
    model = GPT(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.uniform_(0.5, 1.5) if "norm" in name else p.normal_(0, 0.3)
    quant.quantize_model(model, quant.QuantSpec(bits=8))
    return model


@needs_vnni
def test_native_decode_with_biases_and_its_fallback():
    """Biases on every linear layer: the native step still gives the forward's greedy tokens. A token
    whose activations cannot be split (an embedding of 1e-30s: its normed rows are ~1e-27) makes the
    native step decline; the engine then decodes that step with PyTorch, and the tokens stay right."""
    model = llama_with_biases()
    greedy = [SamplingParams(max_tokens=n, temperature=0) for n in (9, 6)]
    prompts = [[5, 17, 42, 9, 70], [11, 12]]
    served = run(Engine(model, max_batch=2), {0: [(p, g) for p, g in zip(prompts, greedy)]})
    expected = [uncached_greedy(model, p, g.max_tokens) for p, g in zip(prompts, greedy)]
    assert [t for t, _, _ in served] == expected
    decoder = cpu.int8_decoder(model, model.new_cache(1, 16))
    with torch.no_grad():
        model.tok_emb.weight[3] = 1e-30 * torch.randn(48)
    cache = model.new_cache(1, 16)
    assert decoder([3], [0], cache) is None
    assert decoder([4], [0], cache) is not None
    served = run(Engine(model, max_batch=1), {0: [([3, 3, 3], greedy[0])]})
    assert served[0][0] == uncached_greedy(model, [3, 3, 3], 9)


@needs_vnni
def test_only_int8_llama_family_models_in_fp32_decode_natively(lmf_llama_dir, lmf_gpt2_dir):
    """The native step takes what it implements and nothing else: float layers, bf16, a GPT-2 block
    (LayerNorm, GELU, learned positions) or a hook stay on PyTorch's path."""
    llama, _ = load_model(lmf_llama_dir)
    assert cpu.int8_decoder(llama, llama.new_cache(2, 16)) is None  # float layers
    quant.quantize_model(llama, quant.QuantSpec(bits=8))
    assert isinstance(cpu.int8_decoder(llama, llama.new_cache(2, 16)), cpu.Int8Decoder)
    hook = llama.blocks[0].register_forward_hook(lambda *args: None)
    assert cpu.int8_decoder(llama, llama.new_cache(2, 16)) is None
    hook.remove()
    llama.to(torch.bfloat16)
    assert cpu.int8_decoder(llama, llama.new_cache(2, 16)) is None
    gpt2, _ = load_model(lmf_gpt2_dir)
    quant.quantize_model(gpt2, quant.QuantSpec(bits=8))
    assert cpu.int8_decoder(gpt2, gpt2.new_cache(2, 16)) is None
    twin = cpu.packed_for_decode(gpt2, 8)  # the packed copy shares the int8 layers and their layouts
    assert twin is not gpt2 and twin.blocks[0].attn.qkv is gpt2.blocks[0].attn.qkv


def test_native_kernels_are_built_once_and_cached(tmp_path, monkeypatch):
    """The library lands in $LMFORGE_CACHE under a name hashing source, compiler and CPU; a second
    build reuses it; a compiler that fails gives no library, and lmforge keeps PyTorch's path."""
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path))
    try:
        first = native._build("int8")
    except OSError as e:  # no compiler or no AVX512-VNNI here: the failure is what lmforge reports
        assert "int8" in str(e) or "compiler" in str(e) or "x86-64" in str(e)
        return
    assert first.parent == tmp_path and first.name.startswith("int8-")
    stamp = first.stat().st_mtime_ns
    assert native._build("int8") == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary file left behind
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails: another hash, a failed build
    with pytest.raises(OSError, match="could not build"):
        native._build("int8")
    assert [p.name for p in tmp_path.iterdir()] == [first.name]
    monkeypatch.setenv("LMFORGE_NATIVE", "0")
    assert native.library.__wrapped__("int8") is None


def test_layer_group_is_the_largest_power_of_two_that_divides():
    assert [layer_group(128, k) for k in (256, 576, 96, 48)] == [128, 64, 32, None]


def test_quantize_config_is_checked():
    with pytest.raises(ConfigError, match="bits"):
        QuantizeConfig(bits=3)
    with pytest.raises(ConfigError, match="calibration"):
        QuantizeConfig(bits=8, calibration="text.txt")
    with pytest.raises(ConfigError, match="calibration_len"):
        QuantizeConfig(bits=4, calibration="text.txt", calibration_tokens=100, calibration_len=512)
    with pytest.raises(ConfigError, match="group"):
        QuantizeConfig(bits=4, group=48)
    with pytest.raises(ConfigError, match="symmetric"):
        QuantizeConfig(bits=8, symmetric=False)


CALIBRATION = ["--calibration", "CALIBRATION", "calibration_tokens=256", "calibration_len=32"]


@pytest.mark.parametrize(
    "settings",
    [
        ["--bits", "8"],
        ["--bits", "4", "--group", "32", "--asymmetric"],
        ["--bits", "4", "group=64"],
        ["--bits", "4", "--group", "32", "--asymmetric", *CALIBRATION],
    ],
)
def test_quantized_folder_loads_and_generates(lmf_llama_dir, tmp_path, settings, capsys):
    """The folder is smaller, loads through load_model (as generate, serve and eval do) with integer
    layers, gives logits near the float model's, and generates; with a calibration text (GPTQ) its
    config says so."""
    out = tmp_path / "q"
    text = tmp_path / "calibration.txt"
    text.write_text("the cat sat on the mat and the dog ran after it. " * 40, encoding="utf-8")
    settings = [str(text) if a == "CALIBRATION" else a for a in settings]
    assert main(["quantize", str(lmf_llama_dir), str(out), *settings]) == 0
    printed = capsys.readouterr().out
    assert "layers as" in printed and ("GPTQ on 256 calibration tokens" in printed) == (
        "--calibration" in settings
    )
    meta = json.loads((out / "config.json").read_text())
    if "--calibration" in settings:
        assert meta["calibration"] == {"method": "gptq", "file": "calibration.txt", "tokens": 256}
    assert meta["quantization"]["bits"] == int(settings[1])
    assert meta["quantization"].get("symmetric", True) == ("--asymmetric" not in settings)
    float_model, tokenizer = load_model(lmf_llama_dir)
    model, _ = load_model(out)
    kinds = {type(m).__name__ for m in model.modules()}
    assert ("Int8Linear" if settings[1] == "8" else "Int4Linear") in kinds
    if "group=64" in settings:  # the MLP's 96 inputs: no group of 64 fits, 32 does
        assert model.blocks[0].mlp.proj.group == 32 and model.blocks[0].attn.qkv.group == 64
    src_size = (lmf_llama_dir / "model.safetensors").stat().st_size
    assert (out / "model.safetensors").stat().st_size < src_size
    # exactly the float model with each quantized layer's round-tripped weights when the input is
    # long (dequantized weights); within bf16 rounding when short (the integer kernels); near the original
    long = torch.tensor([tokenizer.encode("the cat sat on the mat and the dog ran after it " * 3)])
    assert long.size(1) > KERNEL_ROWS
    ids = long[:, :7]
    with torch.no_grad():
        want = float_model(ids)
        for name, layer in model.named_modules():
            if isinstance(layer, Int8Linear | Int4Linear):
                float_model.get_submodule(name).weight.copy_(layer.dequantized())
        torch.testing.assert_close(model(long), float_model(long), atol=1e-4, rtol=1e-4)
        reference, got = float_model(ids), model(ids)
    assert (got - reference).norm() / reference.norm() < 0.02
    assert 0 < (got - want).norm() / want.norm() < (0.05 if settings[1] == "8" else 0.6)
    cfg = GenerationConfig(max_new_tokens=5, temperature=0)
    assert len(generate_ids(model, [ids[0].tolist()], cfg)[0]) == 5
    with pytest.raises(LmforgeError, match="already quantized"):
        quantize_folder(out, tmp_path / "again", QuantizeConfig())
