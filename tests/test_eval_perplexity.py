"""`lmforge eval perplexity`: exp of the mean negative log-likelihood, checked against the chain rule."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import corpus_text
from lmforge.cli import main
from lmforge.evaluate.perplexity import perplexity, sliding_nll
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.models.io import save_model
from lmforge.tokenizer.shards import TokenShards, build_shards

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory, bpe_tokenizer):
    out = tmp_path_factory.mktemp("ppl") / "shards"
    docs = [p for p in corpus_text()[:40_000].split("\n\n") if p.strip()]
    build_shards(docs, bpe_tokenizer, out, val_fraction=0.2, progress=False)
    return out


@pytest.fixture(scope="module")
def model(bpe_tokenizer) -> GPT:
    torch.manual_seed(0)
    return GPT(
        GPTConfig(vocab_size=bpe_tokenizer.vocab_size, max_seq_len=64, n_layer=2, n_head=2, d_model=32)
    )


def test_perplexity_is_exp_of_mean_nll_by_the_chain_rule(shards, model):
    got = perplexity(model, shards, "val", seq_len=16, batch_size=3)
    s = TokenShards(shards)
    (f, start, end) = s.ranges("val")[0]
    tokens = np.asarray(s.file(f)[start:end], dtype=np.int64)
    n_windows = (len(tokens) - 1) // 16
    log_p = 0.0
    with torch.no_grad():
        for i in range(n_windows):  # log p(x_2..x_17 | x_1) = sum_t log p(x_t | x_<t), window by window
            window = torch.from_numpy(tokens[i * 16 : i * 16 + 17])[None]
            log_p += model.sequence_log_prob(window).item()
    assert got["tokens"] == 16 * n_windows
    assert got["loss"] == pytest.approx(-log_p / got["tokens"], rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(-log_p / got["tokens"]), rel=1e-5)
    # Untrained weights: close to uniform over the vocabulary.
    assert 0.5 * model.config.vocab_size < got["perplexity"] < 2 * model.config.vocab_size
    capped = perplexity(model, shards, "val", seq_len=16, batch_size=3, max_tokens=40)
    assert capped["tokens"] == 48  # whole batches until the cap is reached


def test_cli_on_a_model_folder(shards, model, bpe_tokenizer, tmp_path, capsys):
    save_model(model, bpe_tokenizer, tmp_path / "m")
    assert main(["eval", "perplexity", str(tmp_path / "m"), "--data", str(shards), "--seq-len", "16"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["perplexity"] == pytest.approx(perplexity(model, shards, "val", 16)["perplexity"], rel=1e-6)
    assert main(["eval", "perplexity", str(tmp_path), "--data", str(shards)]) == 2
    assert "neither a model folder nor a run folder" in capsys.readouterr().err


def test_shards_of_another_tokenizer_and_bad_settings_are_refused(shards, model, bpe_tokenizer, tmp_path):
    from lmforge.errors import LmforgeError
    from lmforge.tokenizer.train import train_bpe

    other = train_bpe([corpus_text()[40_000:120_000]], bpe_tokenizer.vocab_size)  # same size, other merges
    assert other.vocab_size == bpe_tokenizer.vocab_size and other.fingerprint() != bpe_tokenizer.fingerprint()
    with pytest.raises(LmforgeError, match="tokenized with another tokenizer than the model's"):
        perplexity(model, shards, "val", 16, tokenizer=other)
    assert perplexity(model, shards, "val", 16, tokenizer=bpe_tokenizer)["tokens"] > 0
    with pytest.raises(LmforgeError, match="seq_len must be between 1 and the model's context of 64, got 65"):
        perplexity(model, shards, "val", seq_len=65)
    for bad in ({"batch_size": 0}, {"max_tokens": 0}):
        with pytest.raises(LmforgeError, match="batch_size and max_tokens must be positive"):
            perplexity(model, shards, "val", 16, **bad)


def test_cli_refuses_shards_of_another_tokenizer(shards, model, bpe_tokenizer, tmp_path, capsys):
    from lmforge.tokenizer.train import train_bpe

    other = train_bpe([corpus_text()[40_000:120_000]], bpe_tokenizer.vocab_size)
    save_model(model, other, tmp_path / "m")
    assert main(["eval", "perplexity", str(tmp_path / "m"), "--data", str(shards), "--seq-len", "16"]) == 2
    assert "tokenized with another tokenizer than the model's" in capsys.readouterr().err
    assert main(["eval", "perplexity", str(tmp_path / "m"), "--data", str(shards), "--seq-len", "99"]) == 2


@pytest.mark.parametrize("context,stride", [(16, 1), (16, 16), (16, 5), (64, 64)])
def test_sliding_nll_scores_each_token_once_with_its_window(model, context, stride):
    """Each token t >= 1 once, given the context tokens before its block's end: with stride 1 exactly
    the last min(t, context); one window covering the text is the plain chain rule."""
    ids = torch.randint(
        0, model.config.vocab_size, (41,), generator=torch.Generator().manual_seed(0)
    ).tolist()
    nll, count = sliding_nll(model, ids, context, stride)
    assert count == len(ids) - 1
    with torch.no_grad():
        want = 0.0
        for t in range(1, len(ids)):
            end = min(1 + (t - 1) // stride * stride + stride, len(ids))  # the end of t's block
            before = ids[max(0, end - 1 - context) : t]
            want -= model(torch.tensor([before]))[0, -1].log_softmax(-1)[ids[t]].item()
            if stride == 1:
                assert len(before) == min(t, context)
    assert math.isclose(nll, want, rel_tol=1e-5)
