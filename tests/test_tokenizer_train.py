"""Tokenizer training: byte-level BPE and character-level, saved/loaded as HF tokenizer.json."""

from __future__ import annotations

import json

import pytest

from conftest import corpus_text
from lmforge.cli import main
from lmforge.tokenizer.core import Tokenizer
from lmforge.tokenizer.train import DEFAULT_SPECIALS, train_bpe, train_char

SAMPLES = [
    "Hello, world! The quick brown fox.",
    "中文分词测试：你好，世界。",
    "naïve café — “quotes” 🎉\n\ttabs and\r\nCRLF  double  spaces",
    "",
]


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_bpe([corpus_text()[:150_000]], vocab_size=600, extra_special_tokens=["<|im_start|>"])


def test_bpe_vocab_and_special_tokens(bpe):
    assert bpe.vocab_size == 600
    assert (bpe.pad_id, bpe.bos_id, bpe.eos_id, bpe.unk_id) == (0, 1, 2, 3)
    assert bpe.backend.token_to_id("<|im_start|>") == 4
    # Merges were learned: common English compresses well below one token per character.
    text = corpus_text()[200_000:210_000]
    assert len(bpe.encode(text)) < 0.5 * len(text)


def test_bpe_round_trips_any_unicode(bpe):
    for s in SAMPLES:
        ids = bpe.encode(s)
        assert bpe.unk_id not in ids
        assert bpe.decode(ids) == s
    assert bpe.encode("<|eos|>") == [bpe.eos_id]  # specials are atomic


def test_bpe_save_load_and_transformers(bpe, tmp_path):
    from transformers import PreTrainedTokenizerFast

    bpe.save(tmp_path)
    again = Tokenizer.load(tmp_path)
    assert again.special_tokens == {**bpe.special_tokens}
    hf = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    for s in SAMPLES:
        assert again.encode(s) == bpe.encode(s) == hf(s, add_special_tokens=False).input_ids
        assert hf.decode(bpe.encode(s)) == s
    assert hf.eos_token == DEFAULT_SPECIALS["eos_token"] and hf.pad_token_id == 0


def test_char_tokenizer(tmp_path):
    from transformers import PreTrainedTokenizerFast

    text = "To be, or not to be:\nthat is the question. 你好"
    tok = train_char([text])
    assert tok.vocab_size == len(DEFAULT_SPECIALS) + len(set(text))
    ids = tok.encode(text)
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert tok.encode("Z") == [tok.unk_id]  # unseen character
    tok.save(tmp_path)
    hf = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert hf(text, add_special_tokens=False).input_ids == ids
    assert hf.decode(ids) == Tokenizer.load(tmp_path).decode(ids) == text


def test_cli_trains_from_text_and_jsonl(tmp_path, capsys):
    (tmp_path / "a.txt").write_text(corpus_text()[:60_000], encoding="utf-8")
    lines = [json.dumps({"text": t}) for t in ("第一篇文章。", "Second document.")]
    (tmp_path / "b.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "tok"
    args = ["tokenizer", "train", "--input", str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")]
    assert main([*args, "--vocab-size", "400", "--special", "<|sep|>", "--out", str(out)]) == 0
    tok = Tokenizer.load(out)
    assert tok.vocab_size == 400 and tok.backend.token_to_id("<|sep|>") == 4
    assert tok.decode(tok.encode("第一篇文章。")) == "第一篇文章。"
    assert main([*args, "--vocab-size", "100", "--out", str(out)]) == 2  # below 256 bytes + specials
    assert "vocab_size must be at least 260" in capsys.readouterr().err
