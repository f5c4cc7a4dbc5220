"""The encoder-decoder: teacher forcing equals step-by-step decoding on the cache, padding changes
nothing, and BART / Marian checkpoints convert both ways with logits equal to 1e-4."""

import pytest
import torch
from transformers import BartConfig, BartForConditionalGeneration, MarianConfig, MarianMTModel

from lmforge.cli import main
from lmforge.hf.convert import from_hf
from lmforge.infer import cpu
from lmforge.infer import seq2seq as s2s
from lmforge.infer.sampling import GenerationConfig
from lmforge.infer.seq2seq import generate_ids
from lmforge.models import native
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


def _random_flavour(eos_bias: float, **kw) -> Seq2Seq:
    """A tiny encoder-decoder with every weight random (biases and LayerNorms too) and a logits bias
    on eos (2) that (where it is large enough) makes sources finish at different steps."""
    model = _model(logits_bias=True, **kw)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if "norm" in name else 0.4) + (1.0 if "norm" in name else 0.0))
        model.logits_bias.normal_(0, 1)
        model.logits_bias[0, 2] = eos_bias
    return model


# flavour: (settings, eos bias; 0: no source ends early in this one)
FLAVOURS = {
    "post-norm silu (Marian)": (dict(activation="silu"), 6.0),
    "pre-norm gelu, learned positions, embedding norm (BART-like)": (
        dict(norm_position="pre", activation="gelu", pos_emb="learned", pos_offset=2, emb_norm=True),
        6.0,
    ),
    "post-norm relu, unscaled embeddings": (dict(activation="relu", emb_scale=False, d_ff=48), 0.0),
    "pre-norm gelu_tanh, separate embeddings": (
        dict(norm_position="pre", activation="gelu_tanh", share_embeddings=False, tie_embeddings=False),
        6.0,
    ),
}


@pytest.mark.skipif(native.library("decode") is None, reason="no AVX512 seq2seq kernel on this machine")
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_the_decode_step_in_c_is_pytorchs(flavour, monkeypatch):
    """Beam search and greedy decoding with the decoder step in C (``infer/cpu.py: Seq2SeqDecoder``)
    give the tokens of PyTorch's step, for sources of different lengths (padding) that finish at
    different steps (rows and memory rows leave); one step's logits agree to 1e-5 (an exp off by 1e-4 in
    the SiLU fails it)."""
    settings, eos_bias = FLAVOURS[flavour]
    model = _random_flavour(eos_bias, **settings)
    g = torch.Generator().manual_seed(4)
    sources = [[*torch.randint(3, 59, (n,), generator=g).tolist(), 2] for n in (9, 4, 12, 6)]
    beam = GenerationConfig(max_new_tokens=12, num_beams=3, temperature=0.0, early_stopping=True)
    greedy = GenerationConfig(max_new_tokens=12, temperature=0.0)
    calls = []
    step = cpu.Seq2SeqDecoder.__call__
    monkeypatch.setattr(cpu.Seq2SeqDecoder, "__call__", lambda *a: calls.append(a[1].size(0)) or step(*a))
    native = [generate_ids(model, sources, c, 2) for c in (beam, greedy)]
    assert calls  # the C step ran
    if eos_bias:  # sources finished at different steps: rows and memory rows left on the way
        assert len({len(t) for t in native[0]}) > 1 and len(set(calls)) > 1
    monkeypatch.setattr(s2s, "seq2seq_decoder", lambda *a: None)
    assert [generate_ids(model, sources, c, 2) for c in (beam, greedy)] == native
    monkeypatch.undo()
    stepper = s2s.Seq2SeqStepper(model, sources, 12)
    with torch.no_grad():
        stepper.start(3)
        stepper.valid[1] = False  # a source with no valid key: its queries see every key (attention_mask)
        stepper.bound = None
        tokens = torch.randint(3, 59, (12, 1), generator=g)
        cache = stepper.cache
        saved = cache.k.clone(), cache.v.clone(), cache.length
        ours = stepper._logits(tokens)
        cache.k, cache.v, cache.length = saved
        states = model.decode(tokens, stepper.memory, stepper.valid, cache=cache, head=False)
        theirs = model.logits(states)[:, -1]
    assert stepper.native is not None
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-6)  # measured: up to 4e-6 of logits ~9


@pytest.mark.skipif(native.library("decode") is None, reason="no AVX512 seq2seq kernel on this machine")
def test_the_c_step_declines_what_it_does_not_implement_and_keeps_no_model_alive():
    """Quantized layers (their weights are int8 buffers) keep PyTorch's step and still translate; the
    cached C step does not keep its model alive (it is cached weakly on it)."""
    import gc
    import weakref

    from lmforge.models.quant import QuantSpec, quantize_model

    sources = [[5, 9, 13, 2], [7, 2]]
    cfg = GenerationConfig(max_new_tokens=6, num_beams=2, temperature=0.0)
    model = _random_flavour(0.0, activation="silu")
    assert cpu.seq2seq_decoder(model, model.new_cache(2, 8)) is not None
    generate_ids(model, sources, cfg, 2)
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None
    quantized = _random_flavour(0.0, activation="silu")
    quantize_model(quantized, QuantSpec(bits=8))
    assert cpu.seq2seq_decoder(quantized, quantized.new_cache(2, 8)) is None
    assert all(len(t) == 6 for t in generate_ids(quantized, sources, cfg, 2))


def test_logits_keep_their_dtype_rules():
    """The logits bias is added in place only where that changes nothing: under bf16 autocast the
    logits are fp32 (the bias promotes them), and one state (d_model,) gives (1, V) as broadcasting does."""
    model = _random_flavour(0.0)
    x = torch.randn(3, 32)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model.logits(x).dtype == torch.float32
        assert model.logits(x[0]).shape == (1, 61)
        torch.testing.assert_close(model.logits(x), model.lm_head(x) + model.logits_bias)
