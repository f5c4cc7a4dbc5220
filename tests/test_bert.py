"""The BERT encoder against transformers on random weights: hidden states, pooler and masked-LM logits
to 1e-4, padding masked, import and export both ways (BertModel and BertForMaskedLM)."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig as HFBertConfig
from transformers import BertForMaskedLM, BertModel

from lmforge.hf.convert import from_hf, to_hf
from lmforge.models.bert import Bert, BertConfig
from lmforge.models.io import load_model

SHAPE = dict(
    vocab_size=97,
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=80,
    max_position_embeddings=40,
    type_vocab_size=2,
    initializer_range=0.2,  # large weights: differences show
)


def random_hf(cls, seed: int = 0):
    torch.manual_seed(seed)
    model = cls(HFBertConfig(**SHAPE)).eval()
    with torch.no_grad():  # HF initialises norms to 1 and biases to 0: randomise them so they count
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.uniform_(-0.5, 1.5)
    return model


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 97, (3, 12), generator=g)
    valid = torch.ones(3, 12, dtype=torch.bool)
    valid[1, 9:] = False  # padding at the end of two rows
    valid[2, 5:] = False
    segments = torch.zeros(3, 12, dtype=torch.long)
    segments[0, 6:] = 1
    return ids, valid, segments


@pytest.mark.parametrize("cls", [BertModel, BertForMaskedLM])
def test_import_matches_transformers(cls, tmp_path):
    hf = random_hf(cls)
    hf.save_pretrained(tmp_path / "hf")
    ours, _ = load_model(from_hf(tmp_path / "hf", tmp_path / "lmf"))
    ids, valid, segments = batch()
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=valid.long(), token_type_ids=segments)
        hidden = ours(ids, valid, segments, head=False)
        if cls is BertModel:
            assert ours.config.pooler and not ours.config.mlm_head
            ref = out.last_hidden_state
            assert torch.allclose(ours.pool(hidden), out.pooler_output, atol=1e-4)
        else:
            assert ours.config.mlm_head and not ours.config.pooler
            ref = hf.bert(
                input_ids=ids, attention_mask=valid.long(), token_type_ids=segments
            ).last_hidden_state
            logits = ours(ids, valid, segments)
            assert torch.allclose(logits[valid], out.logits[valid], atol=1e-4)
    assert torch.allclose(hidden[valid], ref[valid], atol=1e-4)  # padding positions are never used


@pytest.mark.parametrize("mlm", [False, True])
def test_export_loads_in_transformers_with_the_same_outputs(mlm, tmp_path):
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=97,
        max_seq_len=40,
        n_layer=2,
        n_head=4,
        d_model=48,
        d_ff=80,
        pooler=not mlm,
        mlm_head=mlm,
        init_std=0.2,
    )
    ours = Bert(cfg).eval()
    from lmforge.models.io import save_model

    to_hf(save_model(ours, None, tmp_path / "lmf"), tmp_path / "hf")
    hf = (BertForMaskedLM if mlm else BertModel).from_pretrained(tmp_path / "hf").eval()
    ids, valid, segments = batch()
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=valid.long(), token_type_ids=segments)
        if mlm:
            assert torch.allclose(ours(ids, valid, segments)[valid], out.logits[valid], atol=1e-4)
        else:
            hidden = ours(ids, valid, segments, head=False)
            assert torch.allclose(hidden[valid], out.last_hidden_state[valid], atol=1e-4)
            assert torch.allclose(ours.pool(hidden), out.pooler_output, atol=1e-4)


def test_padding_never_changes_the_valid_positions():
    torch.manual_seed(0)
    model = Bert(BertConfig(vocab_size=50, max_seq_len=16, n_layer=2, n_head=2, d_model=16, d_ff=32)).eval()
    ids = torch.randint(0, 50, (1, 10))
    valid = torch.ones(1, 10, dtype=torch.bool)
    valid[0, 6:] = False
    other = ids.clone()
    other[0, 6:] = torch.randint(0, 50, (4,))  # different tokens where the padding is
    with torch.no_grad():
        a, b = model(ids, valid), model(other, valid)
        alone = model(ids[:, :6])
    assert torch.allclose(a[0, :6], b[0, :6], atol=1e-6) and torch.allclose(a[0, :6], alone[0], atol=1e-5)


def test_a_wordpiece_tokenizer_keeps_its_roles_and_ignores_saved_padding(tmp_path):
    """BERT folders (sentence-transformers ones) save tokenizer.json with padding to 128 switched on:
    encode must still return the text's own ids, and [CLS]/[SEP]/[MASK] must be known."""
    import json

    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, normalizers, pre_tokenizers, trainers

    from lmforge.tokenizer.core import Tokenizer

    backend = HFTokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend.train_from_iterator(
        ["a witty movie, gorgeous and seductive"] * 20,
        trainers.WordPieceTrainer(vocab_size=80, special_tokens=specials),
    )
    backend.enable_padding(length=32, pad_id=0, pad_token="[PAD]")
    backend.enable_truncation(max_length=32)
    backend.save(str(tmp_path / "tokenizer.json"))
    roles = {
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(roles))
    tok = Tokenizer.load(tmp_path)
    ids = tok.encode("A witty movie")
    assert len(ids) == 3 and 0 not in ids and tok.decode(ids) == "a witty movie"
    assert (tok.cls_id, tok.sep_id, tok.mask_id) == (2, 3, 4)
