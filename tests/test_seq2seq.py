"""The encoder-decoder: teacher forcing equals step-by-step decoding on the cache, padding changes
nothing, and BART / Marian checkpoints convert both ways with logits equal to 1e-4."""

import pytest
import torch
from transformers import BartConfig, BartForConditionalGeneration, MarianConfig, MarianMTModel

from lmforge.cli import main
from lmforge.hf.convert import from_hf
from lmforge.models.io import load_model, save_model
from lmforge.models.seq2seq import Seq2Seq, Seq2SeqConfig

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = dict(vocab_size=61, max_seq_len=40, n_enc_layer=2, n_dec_layer=2, n_head=4, d_model=32, dropout=0.0)


def _model(**kw) -> Seq2Seq:
    torch.manual_seed(0)
    return Seq2Seq(Seq2SeqConfig(**{**TINY, **kw})).eval()


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_cached_decoding_equals_teacher_forcing(norm_position):
    """Feeding the target one token at a time through the KV cache (cross-attention K/V computed once)
    gives the logits teacher forcing computes in one pass."""
    model = _model(norm_position=norm_position)
    src, tgt = torch.randint(3, 61, (2, 9)), torch.randint(3, 61, (2, 7))
    with torch.no_grad():
        full = model(src, tgt)
        kv, cache = model.memory_kv(model.encode(src)), model.new_cache(2, 7)
        steps = [model.decode(tgt[:, t : t + 1], kv, cache=cache) for t in range(7)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_source_padding_changes_nothing():
    model = _model()
    src, tgt = torch.randint(3, 61, (1, 6)), torch.randint(3, 61, (1, 5))
    padded = torch.cat([src, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    valid = torch.arange(10)[None] < 6
    with torch.no_grad():
        torch.testing.assert_close(model(padded, tgt, valid), model(src, tgt), atol=1e-5, rtol=0)
        assert not torch.allclose(model(padded, tgt), model(src, tgt), atol=1e-3)  # unmasked, it would


def test_the_decoder_reads_the_source_through_cross_attention():
    """p(y | x) depends on x: a different source changes every target position's logits."""
    model = _model()
    tgt = torch.randint(3, 61, (1, 5))
    with torch.no_grad():
        a, b = model(torch.randint(3, 61, (1, 6)), tgt), model(torch.randint(3, 61, (1, 6)), tgt)
    assert (a - b).abs().amax(dim=-1).min() > 1e-4


def test_save_and_load_keep_ties_and_tables(tmp_path):
    model = _model(share_embeddings=True, tie_embeddings=True)
    save_model(model, None, tmp_path / "m")
    loaded, _ = load_model(tmp_path / "m")
    assert loaded.lm_head.weight is loaded.dec_emb.tokens.weight is loaded.enc_emb.tokens.weight
    src, tgt = torch.randint(3, 61, (2, 5)), torch.randint(3, 61, (2, 4))
    with torch.no_grad():
        torch.testing.assert_close(loaded(src, tgt), model(src, tgt))


# --------------------------------------------------------------------------------------------------
# Hugging Face BART and Marian


def _hf_bart(**kw):
    cfg = BartConfig(
        vocab_size=61, max_position_embeddings=40, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, **kw,
    )  # fmt: skip
    return BartForConditionalGeneration(cfg)


def _hf_marian(**kw):
    cfg = MarianConfig(
        vocab_size=61, max_position_embeddings=40, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48,
        activation_function="swish", scale_embedding=True, pad_token_id=60, eos_token_id=0,
        decoder_start_token_id=60, **kw,
    )  # fmt: skip
    return MarianMTModel(cfg)


FAMILIES = {
    "bart": _hf_bart,
    "marian": _hf_marian,
    "marian-unshared": lambda: _hf_marian(share_encoder_decoder_embeddings=False, tie_word_embeddings=False),
}


def _randomize(model):
    """Random weights everywhere (HF zero-initialises biases, final_logits_bias and LayerNorms)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:  # Marian's sinusoidal tables
                continue
            p.copy_(
                torch.randn_like(p) * (0.5 if "norm" in name else 0.1)
                + (1.0 if "norm" in name and name.endswith("weight") else 0.0)
            )
        model.final_logits_bias.copy_(torch.randn_like(model.final_logits_bias))
    return model.eval()


def _inputs():
    g = torch.Generator().manual_seed(2)
    src, tgt = torch.randint(3, 59, (2, 9), generator=g), torch.randint(3, 59, (2, 6), generator=g)
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, 6:] = False
    return src, tgt, valid


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_import_and_export_match_logits(family, tmp_path):
    hf = _randomize(FAMILIES[family]())
    hf.save_pretrained(tmp_path / "hf")
    model, _ = load_model(from_hf(tmp_path / "hf", tmp_path / "lmf"))
    src, tgt, valid = _inputs()
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=valid.long(), decoder_input_ids=tgt).logits
        torch.testing.assert_close(model(src, tgt, valid), ref, atol=1e-4, rtol=0)
        for p in model.parameters():  # the export must carry our weights, not the original ones
            p.add_(0.01 * torch.randn_like(p))
        ours = model(src, tgt, valid)
    save_model(model, None, tmp_path / "lmf2")
    assert main(["convert", "--to-hf", str(tmp_path / "lmf2"), str(tmp_path / "back")]) == 0
    back = type(hf).from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            back(input_ids=src, attention_mask=valid.long(), decoder_input_ids=tgt).logits,
            ours,
            atol=1e-4,
            rtol=0,
        )
    assert back.config.decoder_start_token_id == hf.config.decoder_start_token_id


def test_export_says_why_no_family_fits(tmp_path, capsys):
    save_model(_model(norm_position="pre"), None, tmp_path / "m")
    assert main(["convert", "--to-hf", str(tmp_path / "m"), str(tmp_path / "out")]) != 0
    assert "marian: norm_position='pre' (needs 'post')" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
