"""docs/theory.md: each formula against a literal transcription (see the table there)."""

import math

import torch

from lmforge.models.gpt import GPT, GPTConfig

torch.manual_seed(0)
CFG = GPTConfig(vocab_size=50, max_seq_len=32, n_layer=2, n_head=2, d_model=16, init_std=0.3)


def test_chain_rule_sequence_probability():
    """p(x_1..x_T) = prod_t p(x_t | x_<t): multiply the conditionals one prefix at a time."""
    model = GPT(CFG).eval()
    x = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        log_p = model.sequence_log_prob(x)
        for b in range(2):
            prod = 1.0
            for t in range(1, 9):
                probs = torch.softmax(model(x[b : b + 1, :t])[0, -1], dim=-1)
                prod *= float(probs[x[b, t]])
            assert math.isclose(math.exp(float(log_p[b])), prod, rel_tol=1e-4)


def test_hidden_states_then_head_are_the_logits():
    """logits = h_T W_outᵀ: forward(head=False) gives the final-normed h (B, T, d_model) that heads use."""
    model = GPT(CFG).eval()
    x = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        hidden = model(x, head=False)
        assert hidden.shape == (2, 9, 16)
        torch.testing.assert_close(model.lm_head(hidden), model(x))
        torch.testing.assert_close(model(x, head=False, last_only=True), hidden[:, -1:])


def test_cross_entropy_and_perplexity():
    """CE = -1/N sum log p(target); perplexity = exp(CE) (a uniform model has perplexity = vocab)."""
    model = GPT(CFG).eval()
    x = torch.randint(0, 50, (3, 12))
    with torch.no_grad():
        ce = float(model.loss(x[:, :-1], x[:, 1:]))
        logits = model(x[:, :-1])
    nll = [
        -math.log(float(torch.softmax(logits[b, t], -1)[x[b, t + 1]])) for b in range(3) for t in range(11)
    ]
    assert math.isclose(ce, sum(nll) / len(nll), rel_tol=1e-5)
    with torch.no_grad():  # zero output head: every token equally likely
        model.lm_head.weight.zero_()
        assert math.isclose(math.exp(float(model.loss(x[:, :-1], x[:, 1:]))), 50, rel_tol=1e-5)


def test_ignored_targets_do_not_count():
    model = GPT(CFG).eval()
    x = torch.randint(0, 50, (1, 10))
    y = x[:, 1:].clone()
    y[:, :4] = -100
    with torch.no_grad():
        full = torch.nn.functional.cross_entropy(model(x[:, :-1])[0, 4:], x[0, 5:])
        torch.testing.assert_close(model.loss(x[:, :-1], y), full)


def test_gpt2_initialisation_scales_residual_projections():
    model = GPT(GPTConfig(vocab_size=50, max_seq_len=32, n_layer=8, n_head=2, d_model=64))
    std = float(model.blocks[0].attn.proj.weight.detach().std())
    assert abs(std - 0.02 / math.sqrt(16)) < 0.001
    assert abs(float(model.blocks[0].attn.qkv.weight.detach().std()) - 0.02) < 0.002
    assert model.lm_head.weight is model.tok_emb.weight


def test_every_test_the_theory_table_names_exists():
    """docs/theory.md's "checked by" column names tests as `tests/file.py::test` and `::test` (same file):
    each must be a test function there, so the map never points at a test that was renamed away."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    table = (root / "docs" / "theory.md").read_text(encoding="utf-8")
    missing, current = [], None
    for file, name in re.findall(r"`(?:tests/(\w+\.py))?::(\w+)(?:\[[^\]]*\])?`", table):
        current = file or current
        if f"def {name}(" not in (root / "tests" / current).read_text(encoding="utf-8"):
            missing.append(f"{current}::{name}")
    assert len(re.findall(r"::test_", table)) > 50 and not missing
