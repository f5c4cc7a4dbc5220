"""LoRA (models/lora.py): h = W x + b + (α/r)·B A x, written out by hand; B = 0 leaves the model
unchanged; only adapters (and kept parameters) train; fused-projection parts touch only their row
blocks; merge/unmerge, adapters-alone and merged export round-trips, on GPT-2, Llama (grouped-query) and
BERT flavours."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.config import ConfigError
from lmforge.errors import LmforgeError
from lmforge.infer.generate import generate_ids
from lmforge.infer.sampling import GenerationConfig
from lmforge.models import registry
from lmforge.models.bert import BertConfig
from lmforge.models.gpt import GPT, GPTConfig, preset
from lmforge.models.io import load_model, save_model
from lmforge.models.lora import (
    LoRALinear,
    apply_lora,
    load_lora,
    lora_layers,
    lora_state_dict,
    merge_lora,
    unmerge_lora,
)

SMALL = dict(vocab_size=64, max_seq_len=32, n_layer=2, n_head=4, d_model=32, init_std=0.3)
CONFIGS = {
    "gpt2": GPTConfig(**SMALL),
    "llama": GPTConfig(
        **SMALL, n_kv_head=2, pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False
    ),
    "bert": BertConfig(**SMALL, dropout=0.0, pooler=True),
}
TARGETS = {
    "gpt2": ["attn.qkv:q,v", "attn.proj", "mlp.fc"],
    "llama": ["attn.qkv:q,v", "mlp.gate_up:up"],
    "bert": ["attn.qkv:q,v", "mlp.fc"],
}
KEEP = {"gpt2": "norm_f", "llama": "lm_head", "bert": "emb_norm"}  # a part the caller keeps trainable
MLP_IN = {"gpt2": "blocks.1.mlp.fc", "llama": "blocks.1.mlp.gate_up", "bert": "blocks.1.mlp.fc"}
FLAVOURS = list(CONFIGS)


def build(flavour: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return registry.build(CONFIGS[flavour]).eval()


def tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(seed))


def train_adapters(model: nn.Module) -> None:
    """Stand-in for training: random B (A is random already), so B A ≠ 0."""
    with torch.no_grad():
        for layer in lora_layers(model).values():
            for pair in layer.lora.values():
                pair.B.normal_(0.0, 0.5)


def test_lora_linear_is_the_formula():
    """y = W x + b + (α/r)·B A x, whole layer and per row block; dropout on the LoRA input only."""
    torch.manual_seed(0)
    base = nn.Linear(6, 10)
    W, b, x = base.weight, base.bias, torch.randn(3, 6)
    whole = LoRALinear(base, rank=3, alpha=6.0)
    fused = LoRALinear(base, rank=2, alpha=3.0, rows={"q": (0, 4), "v": (7, 10)})
    for layer in (whole, fused):
        train_adapters(layer)
    A, B = whole.lora["all"].A, whole.lora["all"].B
    torch.testing.assert_close(whole(x), x @ W.T + b + (6.0 / 3) * (x @ A.T @ B.T))

    expected = x @ W.T + b
    for part, (start, stop) in {"q": (0, 4), "v": (7, 10)}.items():
        A, B = fused.lora[part].A, fused.lora[part].B
        expected[:, start:stop] += (3.0 / 2) * (x @ A.T @ B.T)
    torch.testing.assert_close(fused(x), expected)

    dropped = LoRALinear(base, rank=3, alpha=6.0, dropout=0.5).train()
    dropped.lora.load_state_dict(whole.lora.state_dict())
    A, B = whole.lora["all"].A, whole.lora["all"].B
    torch.manual_seed(7)
    y = dropped(x)
    torch.manual_seed(7)
    torch.testing.assert_close(y, x @ W.T + b + 2.0 * (F.dropout(x, 0.5) @ A.T @ B.T))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_fresh_adapters_leave_the_model_unchanged(flavour):
    """B = 0 at init, so B A x = 0 and the wrapped model's outputs are the base model's, bit for bit."""
    model, x = build(flavour), tokens()
    with torch.no_grad():
        before = model(x)
        apply_lora(model, TARGETS[flavour], rank=4, alpha=8.0)
        after = model(x)
    layers = lora_layers(model)
    assert len(layers) == len(TARGETS[flavour]) * 2  # every target, in each of the 2 blocks
    for layer in layers.values():
        for pair in layer.lora.values():
            assert not pair.B.any() and pair.A.abs().min() > 0
    assert torch.equal(after, before)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_only_adapters_and_kept_parameters_train(flavour):
    """requires_grad marks the adapters and the kept parameters; two optimizer steps over all of
    model.parameters() change exactly those (A too: its gradient is zero only while B = 0)."""
    model, x = build(flavour), tokens()
    apply_lora(model, TARGETS[flavour], rank=4, alpha=8.0, trainable=[KEEP[flavour]])
    names = [n for n, _ in model.named_parameters()]
    trainable = {n for n in names if ".lora." in n or n.startswith(KEEP[flavour] + ".")}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(2):
        logits = model(x)
        F.cross_entropy(logits.flatten(0, 1), tokens(seed=2).flatten()).backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable


def test_fused_targets_change_only_their_row_blocks():
    """qkv rows are [q: H·D | k: G·D | v: G·D] (H=4, G=2, D=8): ``attn.qkv:q,v`` gives the q and v rows
    W + (α/r)·B A and leaves the k rows exactly W; ``mlp.gate_up:up`` leaves the gate rows alone."""
    model = build("llama")
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_lora(model, ["attn.qkv:q,v", "mlp.gate_up:up"], rank=4, alpha=8.0)
    train_adapters(model)
    qkv = model.blocks[0].attn.qkv
    assert qkv.lora["q"].B.shape == (32, 4) and qkv.lora["v"].B.shape == (16, 4)  # grouped-query v
    with torch.no_grad():
        effective = qkv(torch.eye(32)).T  # column j of the layer's matrix = its output for e_j
    W, s = original["blocks.0.attn.qkv.weight"], 8.0 / 4
    blocks = {"q": slice(0, 32), "k": slice(32, 48), "v": slice(48, 64)}
    assert torch.equal(effective[blocks["k"]], W[blocks["k"]])
    for part in ("q", "v"):
        A, B = qkv.lora[part].A, qkv.lora[part].B
        torch.testing.assert_close(effective[blocks[part]], W[blocks[part]] + s * B.detach() @ A.detach())

    merge_lora(model)
    merged = dict(model.named_parameters())
    d_ff = CONFIGS["llama"].d_ff
    for i in range(2):
        qkv_w, gate_up_w = f"blocks.{i}.attn.qkv.weight", f"blocks.{i}.mlp.gate_up.weight"
        assert torch.equal(merged[qkv_w][32:48], original[qkv_w][32:48])
        assert not torch.equal(merged[qkv_w][:32], original[qkv_w][:32])
        assert torch.equal(merged[gate_up_w][:d_ff], original[gate_up_w][:d_ff])
        assert not torch.equal(merged[gate_up_w][d_ff:], original[gate_up_w][d_ff:])


def test_targets_are_checked():
    """A typo'd target, an unknown part, parts of an unfused layer, a tied weight, a layer named twice
    and adapters that do not fit are errors, never a silent no-op."""
    cases = {
        ("attn.qkv:q,x",): r"no part x \(its parts are q, k, v\)",
        ("attn.proj:q",): "not a fused projection",
        ("attn.nope",): "matches no linear layer",
        ("lm_head",): "tied",
        ("attn.qkv:q", "qkv:v"): "twice",
    }
    for targets, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            apply_lora(build("gpt2"), list(targets))
    state = lora_state_dict(apply_lora(build("gpt2"), ["attn.qkv:q"], rank=4))
    bigger = apply_lora(build("gpt2"), ["attn.qkv:q"], rank=8)
    with pytest.raises(LmforgeError, match="shape mismatches"):
        load_lora(bigger, state)
    with pytest.raises(LmforgeError, match="not a LoRA adapter entry"):
        load_lora(build("gpt2"), {"blocks.0.attn.qkv.weight": torch.zeros(1)})


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_merge_then_unmerge_is_exact(flavour):
    """merge: W ← W + (α/r)·B A, an ordinary model (original keys), outputs equal to 1e-5; unmerge
    with the same adapters gives back W and the LoRA model."""
    model, x = build(flavour), tokens()
    base_keys = set(model.state_dict())
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_lora(model, TARGETS[flavour], rank=4, alpha=8.0)
    train_adapters(model)
    mlp = lora_layers(model)[MLP_IN[flavour]]
    by_hand = mlp.base.weight + mlp.scaling * mlp.delta_weight()
    with torch.no_grad():
        lora_out = model(x)
    state = lora_state_dict(model)

    merge_lora(model)
    assert lora_layers(model) == {} and set(model.state_dict()) == base_keys
    assert all(type(m) is nn.Linear for n, m in model.named_modules() if n.endswith(("qkv", "fc", "gate_up")))
    torch.testing.assert_close(model.get_submodule(MLP_IN[flavour]).weight, by_hand.detach())
    with torch.no_grad():
        torch.testing.assert_close(model(x), lora_out, atol=1e-5, rtol=1e-5)

    unmerge_lora(model, state)
    assert set(lora_layers(model)) == {k.rpartition(".scaling")[0] for k in state if k.endswith(".scaling")}
    for name, p in model.named_parameters():
        base_name = name.replace(".base.", ".")
        if base_name in original:
            torch.testing.assert_close(p.detach(), original[base_name], atol=1e-6, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(x), lora_out, atol=1e-5, rtol=1e-5)
    with pytest.raises(LmforgeError, match="not merged"):
        unmerge_lora(model, state)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_adapters_alone_onto_a_fresh_base(flavour, tmp_path):
    """Save only the adapters; load the base again (a fresh process would), put them on: same outputs,
    whether load_lora wraps the layers itself or finds them wrapped by apply_lora with the same targets."""
    model, x = build(flavour), tokens()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, TARGETS[flavour], rank=4, alpha=8.0)
    train_adapters(model)
    with torch.no_grad():
        expected = model(x)
    state = lora_state_dict(model)
    assert all(".lora." in k or k.endswith(".scaling") for k in state)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "adapters.safetensors")
    adapters = load_file(tmp_path / "adapters.safetensors")

    for prepare in (lambda m: m, lambda m: apply_lora(m, TARGETS[flavour], rank=4, alpha=8.0)):
        fresh = build(flavour, seed=123)
        fresh.load_state_dict(base_state)
        load_lora(prepare(fresh), adapters)
        with torch.no_grad():
            torch.testing.assert_close(fresh(x), expected, atol=0, rtol=0)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_merged_model_exports_as_an_ordinary_model_folder(flavour, tmp_path):
    """merge → save_model → load_model gives the merged outputs (not the base's); a decoder generates
    from the folder the tokens the unmerged LoRA model generated (KV-cache decoding through adapters)."""
    model, x = build(flavour), tokens()
    with torch.no_grad():
        base_out = model(x)
    apply_lora(model, TARGETS[flavour], rank=4, alpha=8.0)
    train_adapters(model)
    cfg = GenerationConfig(max_new_tokens=8, temperature=0, stop_at_eos=False)
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]]
    if isinstance(model, GPT):
        lora_tokens = generate_ids(model, prompts, cfg)
    merge_lora(model)
    loaded, _ = load_model(save_model(model, None, tmp_path / "merged"))
    assert type(loaded) is type(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
        assert not torch.allclose(loaded(x), base_out, atol=1e-3)
    if isinstance(model, GPT):
        assert generate_ids(loaded, prompts, cfg) == lora_tokens


@pytest.mark.parametrize(
    ("config", "layers", "d_model"),
    [(preset("gpt2-124m"), 12, 768), (BertConfig(n_layer=12, n_head=12, d_model=384, d_ff=1536), 12, 384)],
    ids=["gpt2-124m", "minilm-l12-h384"],
)
def test_rank8_qv_adapters_are_small(config, layers, d_model):
    """Rank 8 on q and v: L · 2 · r · (d_in + d_out) numbers, under half a percent of the model
    (built on the meta device: shapes only)."""
    with torch.device("meta"):
        model = registry.build(config)
        total = sum(p.numel() for p in model.parameters())
        apply_lora(model, ["attn.qkv:q,v"], rank=8, alpha=16.0)
    state = lora_state_dict(model)
    adapter_numbers = sum(t.numel() for k, t in state.items() if ".lora." in k)
    assert adapter_numbers == layers * 2 * 8 * (d_model + d_model)
    assert adapter_numbers / total < 0.005  # under half a percent
    assert sum(t.numel() * t.element_size() for t in state.values()) < 1.2e6  # fp32 bytes
