"""Beam search: one beam is greedy; k beams match transformers' beam search token for token, with the
length penalty, each early_stopping rule, no_repeat_ngram_size and min_new_tokens, over a left-padded
batch whose hypotheses end early."""

from functools import cache
from itertools import pairwise

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lmforge.cli import main
from lmforge.config import ConfigError, load_config
from lmforge.errors import LmforgeError
from lmforge.hf.gpt2 import GPT2Adapter
from lmforge.infer import cpu
from lmforge.infer.beam import BeamRows, DecoderStepper, beam_search, best_continuations
from lmforge.infer.config import GenerateConfig
from lmforge.infer.generate import complete, generate_ids, stream_batch
from lmforge.infer.sampling import GenerationConfig
from lmforge.models import native
from lmforge.models.gpt import GPT
from lmforge.models.io import load_model
from lmforge.models.layers import KVCache

EOS, NEW = 5, 12
PROMPTS = [[1, 2, 3, 4], [7, 8], [9, 10, 11, 12, 13, 14]]
REPEATING = [[4, 0, 1, 2, 3, 4], [0, 0, 1, 2, 3, 4], [7, 8]]  # bigrams the model would repeat


pytestmark = pytest.mark.usefixtures("one_thread")


@cache
def models() -> tuple[GPT2LMHeadModel, GPT]:
    """A tiny random GPT-2 whose final-norm bias leans towards eos, so hypotheses end at many lengths,
    and the same weights as an lmforge GPT."""
    torch.manual_seed(2)
    config = GPT2Config(
        vocab_size=48, n_positions=64, n_embd=32, n_layer=2, n_head=2, initializer_range=0.3,
        bos_token_id=EOS, eos_token_id=EOS, pad_token_id=EOS,
    )  # fmt: skip
    hf = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        eos = hf.transformer.wte.weight[EOS]
        hf.transformer.ln_f.bias.add_(2.0 * eos / eos.norm())
    adapter = GPT2Adapter()
    ours_config = adapter.config_from_hf(config.to_dict())
    model = GPT(ours_config).eval()
    model.load_state_dict(adapter.state_from_hf(hf.state_dict(), ours_config), strict=False)  # lm_head: tied
    return hf, model


def beams(prompts: list[list[int]], **settings) -> tuple[list[list[int]], list[float]]:
    cfg = GenerationConfig(max_new_tokens=NEW, **settings)
    found = beam_search(DecoderStepper(models()[1], prompts, NEW), prompts, cfg, EOS)
    return [h.token_ids for h in found], [h.score for h in found]


def hf_beams(prompts: list[list[int]], **settings) -> tuple[list[list[int]], list[float]]:
    width = max(map(len, prompts))
    ids = torch.tensor([[EOS] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = models()[0].generate(
        ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW, pad_token_id=EOS, eos_token_id=EOS,
        output_scores=True, return_dict_in_generate=True, **settings,
    )  # fmt: skip
    rows = out.sequences[:, width:].tolist()
    return [r[: r.index(EOS)] if EOS in r else r for r in rows], out.sequences_scores.tolist()


@pytest.mark.parametrize("early_stopping", [True, False])
def test_one_beam_is_greedy(early_stopping):
    greedy = generate_ids(models()[1], PROMPTS, GenerationConfig(max_new_tokens=NEW, temperature=0), EOS)
    assert any(len(g) < NEW for g in greedy)  # eos ended some rows
    assert beams(PROMPTS, num_beams=1, temperature=0, early_stopping=early_stopping)[0] == greedy


SETTINGS = [
    {"num_beams": 2, "length_penalty": 1.0, "early_stopping": False},
    {"num_beams": 2, "length_penalty": 1.0, "early_stopping": "never"},
    {"num_beams": 2, "length_penalty": 2.0, "early_stopping": True},
    {"num_beams": 4, "length_penalty": 0.6, "early_stopping": False},
    {"num_beams": 4, "length_penalty": 1.0, "early_stopping": True},
    {"num_beams": 4, "length_penalty": 1.0, "early_stopping": "never"},
    {"num_beams": 4, "length_penalty": 2.0, "early_stopping": False},
    {"num_beams": 3, "length_penalty": 2.0, "early_stopping": "never"},
    {"num_beams": 3, "no_repeat_ngram_size": 2},
    {"num_beams": 3, "no_repeat_ngram_size": 3, "early_stopping": True},
    {"num_beams": 4, "early_stopping": True, "min_new_tokens": 3},
]
CASES = [(PROMPTS, s) for s in SETTINGS] + [(REPEATING, {"num_beams": 3, "no_repeat_ngram_size": 2})]


@pytest.mark.parametrize(
    ("prompts", "settings"),
    [pytest.param(p, s, id=",".join(f"{k}={v}" for k, v in s.items())) for p, s in CASES],
)
def test_matches_transformers_beam_search(prompts, settings):
    ours, scores = beams(prompts, **settings)
    theirs, hf_scores = hf_beams(prompts, **settings)
    assert ours == theirs
    assert scores == pytest.approx(hf_scores, abs=1e-5)


def test_the_settings_shape_the_search():
    """What the parity test relies on: on these prompts each setting changes the outcome."""
    rules = [beams(PROMPTS, num_beams=2, early_stopping=e)[0] for e in (True, False, "never")]
    assert [[len(s) for s in r] for r in rules] == [[2, 12, 8], [3, 12, 8], [7, 12, 8]]  # eos, early
    lengths = [sum(map(len, beams(PROMPTS, num_beams=4, length_penalty=a)[0])) for a in (0.6, 1.0, 2.0)]
    assert lengths[0] < lengths[1] < lengths[2]  # a larger length penalty favours longer hypotheses
    at_least = [beams(PROMPTS, num_beams=4, early_stopping=True, min_new_tokens=m)[0] for m in (2, 3, 4)]
    assert len({str(r) for r in at_least}) == 3 and min(len(s) for s in at_least[1]) >= 3
    assert beams(PROMPTS, num_beams=3, no_repeat_ngram_size=2)[0] != beams(PROMPTS, num_beams=3)[0]
    for prompt, new in zip(REPEATING, beams(REPEATING, num_beams=3, no_repeat_ngram_size=2)[0]):
        seq = prompt + new
        assert len(set(pairwise(seq))) == len(seq) - 1
    cfg = GenerationConfig(max_new_tokens=NEW, num_beams=3, no_repeat_ngram_size=2)
    unseen = beam_search(DecoderStepper(models()[1], REPEATING, NEW), [[]] * len(REPEATING), cfg, EOS)
    seen = beams(REPEATING, num_beams=3, no_repeat_ngram_size=2)[0]
    assert [h.token_ids for h in unseen] != seen  # the prompt's bigrams count
    # each prompt alone: the batch (padding, dropping the rows of prompts done early) changes nothing
    assert [beams([p], num_beams=4)[0][0] for p in PROMPTS] == beams(PROMPTS, num_beams=4)[0]


def test_beam_settings_are_checked_and_parsed():
    for bad in (
        {"num_beams": 0},
        {"num_beams": 2, "temperature": 0.7},
        {"num_beams": 2, "top_k": 5},
        {"num_beams": 2, "stop": ["\n"]},
        {"no_repeat_ngram_size": 2},  # one beam: sampling or greedy, which do not apply it
        {"num_beams": 2, "min_new_tokens": NEW + 1},
    ):
        with pytest.raises(ConfigError):
            GenerationConfig(max_new_tokens=NEW, **bad)
    GenerationConfig(num_beams=2, temperature=0)  # greedy's temperature is deterministic too
    load = lambda *kv: load_config(GenerateConfig, overrides=["prompt=[x]", *kv])  # noqa: E731
    assert load("early_stopping=never").early_stopping == "never"
    assert load("early_stopping=true").early_stopping is True
    with pytest.raises(ConfigError, match="early_stopping"):
        load("early_stopping=sometimes")
    with pytest.raises(ConfigError, match="stream"):
        load("num_beams=2", "stream=true")


def test_cli_beams(lmf_gpt2_dir, capsys):
    model, tok = load_model(lmf_gpt2_dir)
    prompts = ["def f(x):", "import"]
    cfg = GenerationConfig(
        max_new_tokens=8, num_beams=3, length_penalty=0.8, early_stopping="never", no_repeat_ngram_size=2
    )
    expected = complete(model, tok, prompts, cfg)
    ids = generate_ids(model, [tok.encode(p) for p in prompts], cfg, tok.eos_id)
    assert [c.token_ids for c in expected] == ids
    assert expected != complete(model, tok, prompts, max_new_tokens=8, temperature=0)
    args = ["generate", str(lmf_gpt2_dir), "--prompt", prompts[0], "--prompt", prompts[1], "--beams", "3"]
    flags = ["--max-new-tokens", "8", "--length-penalty", "0.8", "--early-stopping", "never"]
    flags += ["--no-repeat-ngram-size", "2"]
    assert main([*args, *flags]) == 0
    out = capsys.readouterr().out
    for p, c in zip(prompts, expected):
        assert f"({c.finish_reason}, {len(c.token_ids)} tokens)\n{p}{c.text}\n" in out
    assert main([*args, "--stream"]) == 2
    assert "stream" in capsys.readouterr().err
    with pytest.raises(LmforgeError, match="stream"):
        list(stream_batch(model, tok, prompts, cfg))


def test_beam_rows_copy_only_a_parents_further_children():
    """Followed through random steps, each beam's cache row holds exactly its own history; a step copies
    only the rows of a parent's second and later children, and a prompt's beams stay in its rows."""
    g = torch.Generator().manual_seed(0)
    prompts, k, steps = 3, 4, 12
    cache = KVCache(1, prompts * k, 1, steps + 1, 1, torch.float32, "cpu")
    copied = []
    copy_rows = cache.copy_rows
    cache.copy_rows = lambda src, dst: copied.append(len(src)) or copy_rows(src, dst)
    rows = BeamRows(prompts * k, torch.device("cpu"))
    history = [[float(i)] for i in range(prompts * k)]
    cache.reserve(1)
    cache.k[0, :, 0, 0, 0] = torch.tensor([h[0] for h in history])
    for t in range(1, steps + 1):
        n = len(history) // k
        parents = torch.randint(0, k, (n, k), generator=g) + torch.arange(n)[:, None] * k
        if t == 6:  # the middle prompt is done: its beams leave
            parents = parents[[0, 2]] - torch.tensor([[0], [k]])
        parents = parents.flatten()
        before = len(copied)
        kept = rows.follow(parents, cache)
        history = [[*history[p], 100.0 * t + i] for i, p in enumerate(parents.tolist())]
        if kept is None:
            distinct = sum(len(set(block.tolist())) for block in parents.view(-1, k))
            assert sum(copied[before:]) == len(parents) - distinct
        assert (rows.rows // k).tolist() == (torch.arange(len(parents)) // k).tolist()
        cache.reserve(1)
        cache.k[0, :, 0, t, 0] = rows.to_rows(torch.tensor([h[-1] for h in history]))
        assert torch.equal(rows.from_rows(cache.k[0, :, 0, : t + 1, 0]), torch.tensor(history))


def test_best_continuations_rank_all_k_times_v_candidates():
    """Each beam's best m tokens, normalised, hold a prompt's best m of k * V continuations: the same
    candidates and summed log-probabilities as ranking the full log-softmax, with banned (-inf) tokens."""
    g = torch.Generator().manual_seed(0)
    n, k, vocab, m = 3, 4, 50, 8
    logits = torch.randn(n * k, vocab, generator=g) * 3
    logits[torch.rand(n * k, vocab, generator=g) < 0.3] = float("-inf")
    scores = torch.randn(n, k, generator=g)
    scores[0, 1:] = float("-inf")  # a first step: only beam 0's continuations count
    top, parent, token = best_continuations(logits, logits.logsumexp(-1, keepdim=True), scores, m)
    full = (logits.log_softmax(-1).view(n, k, vocab) + scores[:, :, None]).view(n, -1)
    want, index = full.topk(m)
    torch.testing.assert_close(top, want)
    assert torch.equal(parent, index // vocab) and torch.equal(token, index % vocab)


@pytest.mark.skipif(native.library("decode") is None, reason="no AVX512 decode kernel on this machine")
def test_log_normaliser_and_top_k_in_one_pass_are_torchs():
    """``logz_and_topk`` (beam search's per-row log Z and top k, in C): torch's logsumexp to 1e-5 and
    torch's topk exactly (distinct values), -inf entries included, any width (tails of 16); ties in index
    order; a NaN leaves the step to PyTorch."""
    g = torch.Generator().manual_seed(0)
    for n, v, k in [(160, 8000, 10), (3, 37, 5), (4, 16, 16), (2, 1000, 1)]:
        x = torch.randn(n, v, generator=g) * 5
        x[0, :3] = float("-inf")
        log_z, values, indices = cpu.logz_and_topk(x, k)
        torch.testing.assert_close(log_z, x.logsumexp(-1, keepdim=True), atol=1e-5, rtol=1e-6)
        top = x.topk(k)
        finite = values.isfinite()  # ties (the -inf ones): each in index order, torch's in any order
        assert torch.equal(values, top.values) and torch.equal(indices[finite], top.indices[finite])
        assert torch.equal(indices.sort().values, top.indices.sort().values)
    ties = torch.tensor([[1.0, 3.0, 2.0, 3.0, 1.0, 3.0] * 5])  # equal values: the lower index first
    _, values, indices = cpu.logz_and_topk(ties, 7)
    stable = ties.sort(descending=True, stable=True)
    assert torch.equal(values, stable.values[:, :7]) and torch.equal(indices, stable.indices[:, :7])
    assert cpu.logz_and_topk(torch.tensor([[0.5, float("nan"), 2.0, 1.0]]), 2) is None  # PyTorch's path
    wide = torch.randn(64, 49152, generator=g) * 3  # a vocabulary's worth of logits
    log_z, _, _ = cpu.logz_and_topk(wide, 1)  # to fp32's rounding of log Z (a float sum drifts ~1e-5)
    exact = wide.double().logsumexp(-1, keepdim=True)
    assert (log_z.double() - exact).abs().max() < 2e-6
