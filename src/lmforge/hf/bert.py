"""``BertModel`` / ``BertForMaskedLM`` (model_type ``bert``) <-> lmforge ``bert``.

BERT keeps query, key and value as separate matrices; lmforge fuses them into one ``qkv`` matmul.
``BertModel`` carries the pooler and no masked-LM head; ``BertForMaskedLM`` the head and no pooler (and
prefixes the encoder with ``bert.``): the HF class says which, and an export writes the class that fits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lmforge.errors import LmforgeError
from lmforge.hf.adapter import Adapter, Rule, StateDict

if TYPE_CHECKING:
    from lmforge.models.bert import BertConfig

ACTIVATIONS = {"gelu": "none", "gelu_pytorch_tanh": "tanh", "gelu_new": "tanh"}
CLASSES = {"BertModel": (True, False), "BertForMaskedLM": (False, True)}  # (pooler, mlm_head)


class BertAdapter(Adapter):
    model_type = "bert"
    architecture = "BertModel"
    lmforge_arch = "bert"

    def architecture_for(self, c: BertConfig) -> str:
        return "BertForMaskedLM" if c.mlm_head else "BertModel"

    def config_from_hf(self, cfg: dict[str, Any]) -> BertConfig:
        act = cfg.get("hidden_act", "gelu")
        if act not in ACTIVATIONS:
            raise LmforgeError(
                f"BERT hidden_act {act!r} is not supported; supported: {', '.join(ACTIVATIONS)}"
            )
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise LmforgeError(
                f"BERT position_embedding_type {cfg['position_embedding_type']!r} is not supported"
            )
        classes = [a for a in cfg.get("architectures") or ["BertModel"] if a in CLASSES]
        if not classes:
            raise LmforgeError(
                f"BERT class {cfg.get('architectures')} is not supported; supported: {', '.join(CLASSES)}"
            )
        pooler, mlm_head = CLASSES[classes[0]]
        return self.new_config(
            vocab_size=cfg["vocab_size"],
            max_seq_len=cfg["max_position_embeddings"],
            type_vocab_size=cfg.get("type_vocab_size", 2),
            n_layer=cfg["num_hidden_layers"],
            n_head=cfg["num_attention_heads"],
            d_model=cfg["hidden_size"],
            d_ff=cfg["intermediate_size"],
            norm_eps=cfg.get("layer_norm_eps", 1e-12),
            gelu_approximate=ACTIVATIONS[act],
            dropout=cfg.get("hidden_dropout_prob", 0.1),
            init_std=cfg.get("initializer_range", 0.02),
            pooler=pooler,
            mlm_head=mlm_head,
        )

    def config_to_hf(self, c: BertConfig) -> dict[str, Any]:
        return {
            "vocab_size": c.vocab_size,
            "max_position_embeddings": c.max_seq_len,
            "type_vocab_size": c.type_vocab_size,
            "num_hidden_layers": c.n_layer,
            "num_attention_heads": c.n_head,
            "hidden_size": c.d_model,
            "intermediate_size": c.d_ff,
            "layer_norm_eps": c.norm_eps,
            "hidden_act": "gelu" if c.gelu_approximate == "none" else "gelu_pytorch_tanh",
            "hidden_dropout_prob": c.dropout,
            "attention_probs_dropout_prob": c.dropout,
            "initializer_range": c.init_std,
            "position_embedding_type": "absolute",
        }

    def export_problem(self, c: BertConfig) -> str | None:
        if c.pooler and c.mlm_head:
            return "pooler and mlm_head together (BertModel has no MLM head, BertForMaskedLM no pooler)"
        return None

    def tensor_rules(self, c: BertConfig) -> list[Rule]:
        p = "bert." if c.mlm_head else ""
        e = f"{p}embeddings."
        rules = [
            Rule("tok_emb.weight", f"{e}word_embeddings.weight"),
            Rule("pos_emb.weight", f"{e}position_embeddings.weight"),
            Rule("type_emb.weight", f"{e}token_type_embeddings.weight"),
            Rule("emb_norm.weight", f"{e}LayerNorm.weight"),
            Rule("emb_norm.bias", f"{e}LayerNorm.bias"),
        ]
        for i in range(c.n_layer):
            h, o = f"{p}encoder.layer.{i}.", f"blocks.{i}."
            for x in ("weight", "bias"):
                qkv = tuple(f"{h}attention.self.{n}.{x}" for n in ("query", "key", "value"))
                rules += [
                    Rule(f"{o}attn.qkv.{x}", qkv, (c.d_model,) * 3),
                    Rule(f"{o}attn.proj.{x}", f"{h}attention.output.dense.{x}"),
                    Rule(f"{o}attn_norm.{x}", f"{h}attention.output.LayerNorm.{x}"),
                    Rule(f"{o}mlp.fc.{x}", f"{h}intermediate.dense.{x}"),
                    Rule(f"{o}mlp.proj.{x}", f"{h}output.dense.{x}"),
                    Rule(f"{o}mlp_norm.{x}", f"{h}output.LayerNorm.{x}"),
                ]
        if c.pooler:
            rules += [Rule(f"pooler.{x}", f"{p}pooler.dense.{x}") for x in ("weight", "bias")]
        if c.mlm_head:
            t = "cls.predictions."
            rules += [Rule(f"mlm.dense.{x}", f"{t}transform.dense.{x}") for x in ("weight", "bias")]
            rules += [Rule(f"mlm.norm.{x}", f"{t}transform.LayerNorm.{x}") for x in ("weight", "bias")]
            rules.append(Rule("mlm.bias", f"{t}bias"))
        return rules

    def ignored(self, name: str, c: BertConfig) -> bool:
        """Buffers (position and token-type ids) and the decoder, which is the tied embedding."""
        buffers = ("embeddings.position_ids", "embeddings.token_type_ids")
        return name.endswith(buffers) or name.startswith("cls.predictions.decoder.")

    def normalize_hf_names(self, state: StateDict) -> StateDict:
        """A ``BertModel`` saved from a task model keeps the ``bert.`` prefix: drop it where there is no
        masked-LM head to go with it."""
        if any(k.startswith("cls.") for k in state) or not all(k.startswith("bert.") for k in state):
            return state
        return {k.removeprefix("bert."): v for k, v in state.items()}
