"""``LlamaForCausalLM`` (model_type ``llama``) <-> lmforge ``gpt`` with RoPE, RMSNorm, SwiGLU, no biases.

Llama keeps q/k/v and gate/up as separate matrices; lmforge fuses each group into one matmul.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lmforge.errors import LmforgeError
from lmforge.hf.adapter import Adapter, Rule, mismatches

if TYPE_CHECKING:
    from lmforge.models.gpt import GPTConfig


def rope_theta(cfg: dict[str, Any]) -> float:
    """transformers 4.x keeps ``rope_theta``/``rope_scaling``; 5.x a ``rope_parameters`` dict."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise LmforgeError(f"rope type {rope_type!r} is not supported (only the default RoPE)")
    return float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))


class LlamaAdapter(Adapter):
    model_type = "llama"
    architecture = "LlamaForCausalLM"
    lmforge_arch = "gpt"

    def config_from_hf(self, cfg: dict[str, Any]) -> GPTConfig:
        if cfg.get("hidden_act", "silu") != "silu":
            raise LmforgeError(f"Llama hidden_act {cfg['hidden_act']!r} is not supported; supported: silu")
        for flag in ("attention_bias", "mlp_bias"):
            if cfg.get(flag):
                raise LmforgeError(f"Llama option {flag}=true is not supported")
        return self.new_config(
            vocab_size=cfg["vocab_size"],
            max_seq_len=cfg["max_position_embeddings"],
            n_layer=cfg["num_hidden_layers"],
            n_head=cfg["num_attention_heads"],
            n_kv_head=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
            d_model=cfg["hidden_size"],
            d_ff=cfg["intermediate_size"],
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"],
            pos_emb="rope",
            norm="rmsnorm",
            norm_eps=cfg.get("rms_norm_eps", 1e-6),
            mlp="swiglu",
            bias=False,
            tie_embeddings=cfg.get("tie_word_embeddings", False),
            rope_theta=rope_theta(cfg),
        )

    def config_to_hf(self, c: GPTConfig) -> dict[str, Any]:
        return {
            "max_position_embeddings": c.max_seq_len,
            "num_hidden_layers": c.n_layer,
            "num_attention_heads": c.n_head,
            "num_key_value_heads": c.n_kv_head,
            "hidden_size": c.d_model,
            "intermediate_size": c.d_ff,
            "head_dim": c.head_dim,
            "rms_norm_eps": c.norm_eps,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "rope_theta": c.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
            "vocab_size": c.vocab_size,
            "tie_word_embeddings": c.tie_embeddings,
        }

    def export_problem(self, c: GPTConfig) -> str | None:
        wrong = mismatches(c, {"pos_emb": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False})
        return ", ".join(wrong) or None

    def tensor_rules(self, c: GPTConfig) -> list[Rule]:
        q, kv = c.n_head * c.head_dim, c.n_kv_head * c.head_dim
        rules = [Rule("tok_emb.weight", "model.embed_tokens.weight")]
        for i in range(c.n_layer):
            h, o = f"model.layers.{i}.", f"blocks.{i}."
            attn, mlp = f"{h}self_attn.", f"{h}mlp."
            rules += [
                Rule(f"{o}attn_norm.weight", f"{h}input_layernorm.weight"),
                Rule(f"{o}mlp_norm.weight", f"{h}post_attention_layernorm.weight"),
                Rule(f"{o}attn.qkv.weight", tuple(f"{attn}{x}_proj.weight" for x in "qkv"), (q, kv, kv)),
                Rule(f"{o}attn.proj.weight", f"{attn}o_proj.weight"),
                Rule(
                    f"{o}mlp.gate_up.weight",
                    (f"{mlp}gate_proj.weight", f"{mlp}up_proj.weight"),
                    (c.d_ff,) * 2,
                ),
                Rule(f"{o}mlp.proj.weight", f"{mlp}down_proj.weight"),
            ]
        rules.append(Rule("norm_f.weight", "model.norm.weight"))
        if not c.tie_embeddings:
            rules.append(Rule("lm_head.weight", "lm_head.weight"))
        return rules

    def ignored(self, name: str, c: GPTConfig) -> bool:
        return name.endswith(".rotary_emb.inv_freq") or (c.tie_embeddings and name == "lm_head.weight")
