"""``GPT2LMHeadModel`` (model_type ``gpt2``) <-> lmforge ``gpt`` with learned positions, LayerNorm, GELU."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lmforge.errors import LmforgeError
from lmforge.hf.adapter import Adapter, Rule, StateDict, mismatches

if TYPE_CHECKING:
    from lmforge.models.gpt import GPTConfig

# HF activation_function -> lmforge gelu_approximate.
ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}
UNSUPPORTED_FLAGS = ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn")
# Causal-mask buffers that old GPT-2 checkpoints store.
BUFFERS = (".attn.bias", ".attn.masked_bias")
# Per block: (lmforge name, HF name, stored as Conv1D i.e. transposed).
LAYER = (
    ("attn_norm", "ln_1", False),
    ("mlp_norm", "ln_2", False),
    ("attn.qkv", "attn.c_attn", True),
    ("attn.proj", "attn.c_proj", True),
    ("mlp.fc", "mlp.c_fc", True),
    ("mlp.proj", "mlp.c_proj", True),
)
PREFIX = "transformer."


class GPT2Adapter(Adapter):
    model_type = "gpt2"
    architecture = "GPT2LMHeadModel"
    lmforge_arch = "gpt"

    def config_from_hf(self, cfg: dict[str, Any]) -> GPTConfig:
        act = cfg.get("activation_function", "gelu_new")
        if act not in ACTIVATIONS:
            raise LmforgeError(
                f"GPT-2 activation_function {act!r} is not supported; supported: {', '.join(ACTIVATIONS)}"
            )
        for flag in UNSUPPORTED_FLAGS:
            if cfg.get(flag):
                raise LmforgeError(f"GPT-2 option {flag}=true is not supported")
        return self.new_config(
            vocab_size=cfg["vocab_size"],
            max_seq_len=cfg["n_positions"],
            n_layer=cfg["n_layer"],
            n_head=cfg["n_head"],
            d_model=cfg["n_embd"],
            d_ff=cfg.get("n_inner") or 4 * cfg["n_embd"],
            norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
            gelu_approximate=ACTIVATIONS[act],
            tie_embeddings=cfg.get("tie_word_embeddings", True),
        )

    def config_to_hf(self, c: GPTConfig) -> dict[str, Any]:
        return {
            "n_positions": c.max_seq_len,
            "n_ctx": c.max_seq_len,
            "n_layer": c.n_layer,
            "n_head": c.n_head,
            "n_embd": c.d_model,
            "n_inner": c.d_ff,
            "layer_norm_epsilon": c.norm_eps,
            "activation_function": "gelu_new" if c.gelu_approximate == "tanh" else "gelu",
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "vocab_size": c.vocab_size,
            "tie_word_embeddings": c.tie_embeddings,
        }

    def export_problem(self, c: GPTConfig) -> str | None:
        wrong = mismatches(c, {"pos_emb": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True})
        if c.n_kv_head != c.n_head:
            wrong.append(f"n_kv_head={c.n_kv_head} (needs n_head={c.n_head})")
        if c.head_dim * c.n_head != c.d_model:
            wrong.append(f"head_dim={c.head_dim} (needs d_model/n_head={c.d_model // c.n_head})")
        return ", ".join(wrong) or None

    def tensor_rules(self, c: GPTConfig) -> list[Rule]:
        p = PREFIX
        rules = [Rule("tok_emb.weight", f"{p}wte.weight"), Rule("pos_emb.weight", f"{p}wpe.weight")]
        for i in range(c.n_layer):
            h, o = f"{p}h.{i}.", f"blocks.{i}."
            for ours, theirs, conv in LAYER:
                rules.append(Rule(f"{o}{ours}.weight", f"{h}{theirs}.weight", transpose=conv))
                rules.append(Rule(f"{o}{ours}.bias", f"{h}{theirs}.bias"))
        rules += [Rule("norm_f.weight", f"{p}ln_f.weight"), Rule("norm_f.bias", f"{p}ln_f.bias")]
        if not c.tie_embeddings:
            rules.append(Rule("lm_head.weight", "lm_head.weight"))
        return rules

    def ignored(self, name: str, c: GPTConfig) -> bool:
        return name.endswith(BUFFERS) or (c.tie_embeddings and name == "lm_head.weight")

    def normalize_hf_names(self, state: StateDict) -> StateDict:
        """A bare ``GPT2Model`` checkpoint names its tensors without the ``transformer.`` prefix."""
        if any(k.startswith(PREFIX) for k in state):
            return state
        return {(k if k == "lm_head.weight" else PREFIX + k): v for k, v in state.items()}
