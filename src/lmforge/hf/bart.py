"""``BartForConditionalGeneration`` (``bart``) and ``MarianMTModel`` (``marian``) <-> lmforge ``seq2seq``.

Both are the post-norm encoder-decoder of ``models/seq2seq.py`` with separate query, key and value
matrices (lmforge fuses self-attention's into ``qkv`` and cross-attention's key and value into ``kv``)
and a fixed ``final_logits_bias``. BART: learned positions whose table starts at row 2, a LayerNorm on the
embeddings. Marian: sinusoidal positions (not stored), swish, embeddings scaled by sqrt(d_model), and
source and target embeddings that may be separate tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from lmforge.errors import LmforgeError
from lmforge.hf.adapter import Adapter, Rule, mismatches

if TYPE_CHECKING:
    from lmforge.models.seq2seq import Seq2SeqConfig

# HF activation_function -> lmforge activation, and back.
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
ACTIVATIONS |= {"swish": "silu", "silu": "silu"}
TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu", "silu": "swish"}
# Per block: (lmforge sub-module, HF sub-module) of the one-to-one tensors.
ENCODER_LAYER = (
    ("attn.proj", "self_attn.out_proj"),
    ("attn_norm", "self_attn_layer_norm"),
    ("mlp.fc", "fc1"),
    ("mlp.proj", "fc2"),
    ("mlp_norm", "final_layer_norm"),
)
DECODER_LAYER = (
    *ENCODER_LAYER,
    ("cross_attn.q", "encoder_attn.q_proj"),
    ("cross_attn.proj", "encoder_attn.out_proj"),
    ("cross_norm", "encoder_attn_layer_norm"),
)


class BartAdapter(Adapter):
    model_type = "bart"
    architecture = "BartForConditionalGeneration"
    lmforge_arch = "seq2seq"
    # The lmforge fields this family fixes (checked on export).
    required: ClassVar[dict[str, Any]] = {
        "pos_emb": "learned",
        "pos_offset": 2,
        "emb_norm": True,
        "norm_position": "post",
        "final_norm": False,
        "share_embeddings": True,
    }

    def family_config(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """The lmforge fields that differ between BART and Marian."""
        return {"emb_scale": cfg.get("scale_embedding", False)}

    def config_from_hf(self, cfg: dict[str, Any]) -> Seq2SeqConfig:
        act = cfg.get("activation_function", "gelu")
        if act not in ACTIVATIONS:
            raise LmforgeError(
                f"activation_function {act!r} is not supported; supported: {', '.join(ACTIVATIONS)}"
            )
        for enc, dec in (
            ("encoder_attention_heads", "decoder_attention_heads"),
            ("encoder_ffn_dim", "decoder_ffn_dim"),
        ):
            if cfg[enc] != cfg[dec]:
                raise LmforgeError(
                    f"{enc}={cfg[enc]} differs from {dec}={cfg[dec]}; lmforge needs them equal"
                )
        return self.new_config(
            vocab_size=cfg["vocab_size"],
            max_seq_len=cfg["max_position_embeddings"],
            n_enc_layer=cfg["encoder_layers"],
            n_dec_layer=cfg["decoder_layers"],
            n_head=cfg["encoder_attention_heads"],
            d_model=cfg["d_model"],
            d_ff=cfg["encoder_ffn_dim"],
            activation=ACTIVATIONS[act],
            **{**self.required, **self.family_config(cfg)},
            tie_embeddings=cfg.get("tie_word_embeddings", True),
            logits_bias=True,
            dropout=cfg.get("dropout", 0.1),
            attn_dropout=cfg.get("attention_dropout", 0.0),
            init_std=cfg.get("init_std", 0.02),
            decoder_start_id=cfg["decoder_start_token_id"],
        )

    def config_to_hf(self, c: Seq2SeqConfig) -> dict[str, Any]:
        return {
            "vocab_size": c.vocab_size,
            "max_position_embeddings": c.max_seq_len,
            "encoder_layers": c.n_enc_layer,
            "decoder_layers": c.n_dec_layer,
            "encoder_attention_heads": c.n_head,
            "decoder_attention_heads": c.n_head,
            "d_model": c.d_model,
            "encoder_ffn_dim": c.d_ff,
            "decoder_ffn_dim": c.d_ff,
            "activation_function": TO_HF[c.activation],
            "scale_embedding": c.emb_scale,
            "tie_word_embeddings": c.tie_embeddings,
            "dropout": c.dropout,
            "attention_dropout": c.attn_dropout,
            "init_std": c.init_std,
            "decoder_start_token_id": c.decoder_start_id,
            "is_encoder_decoder": True,
            # lmforge generates nothing it was not asked to: no forced first or last token.
            "forced_bos_token_id": None,
            "forced_eos_token_id": None,
        }

    def export_problem(self, c: Seq2SeqConfig) -> str | None:
        if abs(c.norm_eps - 1e-5) > 1e-12:
            return f"norm_eps={c.norm_eps} (needs 1e-05, torch's LayerNorm default)"
        wrong = mismatches(c, self.required)
        return ", ".join(wrong) if wrong else None

    def embedding_rules(self, c: Seq2SeqConfig) -> list[Rule]:
        rules = [
            Rule("enc_emb.tokens.weight", "model.shared.weight"),
            Rule("enc_emb.positions.weight", "model.encoder.embed_positions.weight"),
            Rule("dec_emb.positions.weight", "model.decoder.embed_positions.weight"),
        ]
        for side in ("enc", "dec"):
            coder = "encoder" if side == "enc" else "decoder"
            rules += [
                Rule(f"{side}_emb.norm.{x}", f"model.{coder}.layernorm_embedding.{x}")
                for x in ("weight", "bias")
            ]
        return rules

    def tensor_rules(self, c: Seq2SeqConfig) -> list[Rule]:
        rules = self.embedding_rules(c)
        for coder, ours, layer, n in (
            ("encoder", "encoder", ENCODER_LAYER, c.n_enc_layer),
            ("decoder", "decoder", DECODER_LAYER, c.n_dec_layer),
        ):
            for i in range(n):
                h, o = f"model.{coder}.layers.{i}.", f"{ours}.{i}."
                for x in ("weight", "bias"):
                    qkv = tuple(f"{h}self_attn.{n}_proj.{x}" for n in "qkv")
                    rules.append(Rule(f"{o}attn.qkv.{x}", qkv, (c.d_model,) * 3))
                    rules += [Rule(f"{o}{a}.{x}", f"{h}{b}.{x}") for a, b in layer]
                    if coder == "decoder":
                        kv = tuple(f"{h}encoder_attn.{n}_proj.{x}" for n in "kv")
                        rules.append(Rule(f"{o}cross_attn.kv.{x}", kv, (c.d_model,) * 2))
        if not c.tie_embeddings:
            rules.append(Rule("lm_head.weight", "lm_head.weight"))
        if c.logits_bias:
            rules.append(Rule("logits_bias", "final_logits_bias"))
        return rules

    def ignored(self, name: str, c: Seq2SeqConfig) -> bool:
        """Copies of tied tables (the per-stack embeddings of a shared one, a tied head) and Marian's
        sinusoidal tables, which are computed rather than stored."""
        tied = ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight")
        if c.share_embeddings and name in tied:
            return True
        if c.tie_embeddings and name == "lm_head.weight":
            return True
        return c.pos_emb == "sinusoidal" and name.endswith("embed_positions.weight")


class MarianAdapter(BartAdapter):
    model_type = "marian"
    architecture = "MarianMTModel"
    required: ClassVar[dict[str, Any]] = {
        "pos_emb": "sinusoidal",
        "pos_offset": 0,
        "emb_norm": False,
        "norm_position": "post",
        "final_norm": False,
    }

    def family_config(self, cfg: dict[str, Any]) -> dict[str, Any]:
        shared = cfg.get("share_encoder_decoder_embeddings", True)
        decoder_vocab = cfg.get("decoder_vocab_size") or cfg["vocab_size"]
        if decoder_vocab != cfg["vocab_size"]:
            raise LmforgeError(
                f"decoder_vocab_size={decoder_vocab} differs from vocab_size={cfg['vocab_size']}"
            )
        return {"emb_scale": cfg.get("scale_embedding", False), "share_embeddings": shared}

    def config_to_hf(self, c: Seq2SeqConfig) -> dict[str, Any]:
        return {
            **super().config_to_hf(c),
            "share_encoder_decoder_embeddings": c.share_embeddings,
            "decoder_vocab_size": c.vocab_size,
            "pad_token_id": c.decoder_start_id,  # Marian's decoder starts from pad (a tokenizer's pad wins)
        }

    def embedding_rules(self, c: Seq2SeqConfig) -> list[Rule]:
        if c.share_embeddings:
            return [Rule("enc_emb.tokens.weight", "model.shared.weight")]
        return [
            Rule("enc_emb.tokens.weight", "model.encoder.embed_tokens.weight"),
            Rule("dec_emb.tokens.weight", "model.decoder.embed_tokens.weight"),
        ]
