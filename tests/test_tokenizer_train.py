"""Tokenizer training: byte-level BPE and character-level, saved/loaded as HF tokenizer.json."""

from __future__ import annotations

import json

import pytest

from conftest import corpus_text
from lmforge.cli import main
from lmforge.tokenizer.core import Tokenizer
from lmforge.tokenizer.train import BERT_SPECIALS, DEFAULT_SPECIALS, train_bpe, train_char, train_wordpiece

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


def test_wordpiece_tokenizes_as_berts_own(tmp_path):
    """Our WordPiece = transformers' BertTokenizer over the same vocab.txt (uncased), ids 0-4 are
    BERT's specials, and the saved folder gives transformers [CLS] a [SEP] b [SEP] with token types."""
    from transformers import BertTokenizer, PreTrainedTokenizerFast

    wp = train_wordpiece([corpus_text()[:150_000]], vocab_size=800)
    assert wp.vocab_size == 800 and (wp.pad_id, wp.unk_id, wp.cls_id, wp.sep_id, wp.mask_id) == (
        0,
        1,
        2,
        3,
        4,
    )
    assert any(piece.startswith("##") for piece in wp.backend.get_vocab())
    vocab = sorted(wp.backend.get_vocab().items(), key=lambda kv: kv[1])
    (tmp_path / "vocab.txt").write_text("".join(f"{piece}\n" for piece, _ in vocab), encoding="utf-8")
    bert = BertTokenizer(vocab=str(tmp_path / "vocab.txt"), do_lower_case=True)
    text = corpus_text()[300_000:302_000]
    for s in [*SAMPLES, text]:
        assert wp.encode(s) == bert(s, add_special_tokens=False).input_ids
    assert wp.decode(wp.encode("Hello, World! Naïve café.")) == "hello, world! naive cafe."
    wp.save(tmp_path / "tok")
    assert Tokenizer.load(tmp_path / "tok").special_tokens == wp.special_tokens
    hf = PreTrainedTokenizerFast.from_pretrained(tmp_path / "tok")
    pair = hf("first part", "second", return_token_type_ids=True)
    a, b = wp.encode("first part"), wp.encode("second")
    assert pair.input_ids == [2, *a, 3, *b, 3] and pair.token_type_ids == [0] * (len(a) + 2) + [1] * (
        len(b) + 1
    )
    assert hf.mask_token == BERT_SPECIALS["mask_token"] and hf.cls_token_id == 2


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
