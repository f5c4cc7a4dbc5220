"""Convert between Hugging Face ``transformers`` checkpoints and lmforge model folders.

Supported: ``GPT2LMHeadModel`` (model_type ``gpt2``) and ``LlamaForCausalLM`` (``llama``). Only the
state dict and config are translated, so ``transformers`` is not needed to convert; it is needed only to
load the result on the other side.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from lmforge.atomic import atomic_directory
from lmforge.errors import LmforgeError
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.models.io import (
    check_state_dict,
    load_model,
    model_state_dict,
    read_safetensors,
    save_model,
)
from lmforge.tokenizer.core import Tokenizer

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)
# Buffers that old GPT-2 checkpoints store but that hold no weights.
GPT2_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


# --------------------------------------------------------------------------------------------------
# Configs


def _rope_theta(cfg: dict) -> float:
    """transformers 4.x keeps ``rope_theta``/``rope_scaling``; 5.x a ``rope_parameters`` dict."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise LmforgeError(f"config.json: rope type {rope_type!r} is not supported (only the default RoPE)")
    return float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def config_from_hf(cfg: dict) -> GPTConfig:
    model_type = cfg.get("model_type")
    if model_type == "gpt2":
        act = cfg.get("activation_function", "gelu_new")
        approx = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}.get(act)
        if approx is None:
            raise LmforgeError(f"config.json: GPT-2 activation {act!r} is not supported")
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
            if cfg.get(flag):
                raise LmforgeError(f"config.json: GPT-2 option {flag}=true is not supported")
        return GPTConfig(
            vocab_size=cfg["vocab_size"],
            max_seq_len=cfg["n_positions"],
            n_layer=cfg["n_layer"],
            n_head=cfg["n_head"],
            d_model=cfg["n_embd"],
            d_ff=cfg.get("n_inner") or 4 * cfg["n_embd"],
            norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
            gelu_approximate=approx,
            tie_embeddings=cfg.get("tie_word_embeddings", True),
        )
    if model_type == "llama":
        if cfg.get("hidden_act", "silu") != "silu":
            raise LmforgeError(f"config.json: Llama activation {cfg.get('hidden_act')!r} is not supported")
        if cfg.get("attention_bias") or cfg.get("mlp_bias"):
            raise LmforgeError("config.json: Llama with attention_bias/mlp_bias is not supported")
        return GPTConfig(
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
            rope_theta=_rope_theta(cfg),
        )
    raise LmforgeError(f"config.json: model_type {model_type!r} is not supported; expected 'gpt2' or 'llama'")


def hf_model_type(c: GPTConfig) -> str:
    """Which transformers family an lmforge config is exactly expressible as."""
    if (
        c.pos_emb == "learned"
        and c.norm == "layernorm"
        and c.mlp == "gelu"
        and c.bias
        and c.n_kv_head == c.n_head
    ):
        return "gpt2"
    if c.pos_emb == "rope" and c.norm == "rmsnorm" and c.mlp == "swiglu" and not c.bias:
        return "llama"
    raise LmforgeError(
        "this model mixes GPT-2 and Llama features (pos_emb/norm/mlp/bias); transformers has no class for it"
    )


def config_to_hf(c: GPTConfig, tokenizer: Tokenizer | None, dtype: torch.dtype) -> dict:
    special = {}
    if tokenizer is not None:
        special = {
            "bos_token_id": tokenizer.bos_id,
            "eos_token_id": tokenizer.eos_id,
            "pad_token_id": tokenizer.pad_id,
        }
    common = {
        "vocab_size": c.vocab_size,
        "tie_word_embeddings": c.tie_embeddings,
        "dtype": str(dtype).split(".")[-1],
    }
    if hf_model_type(c) == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
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
            **common,
            **special,
        }
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
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
        **common,
        **special,
    }


# --------------------------------------------------------------------------------------------------
# Weights

# Per GPT-2 block: (lmforge name, HF name, stored as Conv1D i.e. transposed).
GPT2_LAYER = (
    ("attn_norm", "ln_1", False),
    ("mlp_norm", "ln_2", False),
    ("attn.qkv", "attn.c_attn", True),
    ("attn.proj", "attn.c_proj", True),
    ("mlp.fc", "mlp.c_fc", True),
    ("mlp.proj", "mlp.c_proj", True),
)


def _gpt2_to_ours(sd: dict[str, torch.Tensor], c: GPTConfig) -> dict[str, torch.Tensor]:
    """GPT-2 stores its linear layers as Conv1D, i.e. weight (in, out): transpose them."""
    p = "transformer." if any(k.startswith("transformer.") for k in sd) else ""
    take = _Taker(sd, ignore_suffixes=GPT2_IGNORED_SUFFIXES)
    out = {"tok_emb.weight": take(f"{p}wte.weight"), "pos_emb.weight": take(f"{p}wpe.weight")}
    for i in range(c.n_layer):
        h, o = f"{p}h.{i}.", f"blocks.{i}."
        for ours, theirs, conv in GPT2_LAYER:
            w = take(f"{h}{theirs}.weight")
            out[f"{o}{ours}.weight"] = w.t().contiguous() if conv else w
            out[f"{o}{ours}.bias"] = take(f"{h}{theirs}.bias")
    out["norm_f.weight"], out["norm_f.bias"] = take(f"{p}ln_f.weight"), take(f"{p}ln_f.bias")
    if not c.tie_embeddings:
        out["lm_head.weight"] = take("lm_head.weight")
    else:
        take.discard("lm_head.weight")
    take.finish()
    return out


def _gpt2_from_ours(sd: dict[str, torch.Tensor], c: GPTConfig) -> dict[str, torch.Tensor]:
    out = {"transformer.wte.weight": sd["tok_emb.weight"], "transformer.wpe.weight": sd["pos_emb.weight"]}
    for i in range(c.n_layer):
        h, o = f"transformer.h.{i}.", f"blocks.{i}."
        for ours, theirs, conv in GPT2_LAYER:
            w = sd[f"{o}{ours}.weight"]
            out[f"{h}{theirs}.weight"] = w.t().contiguous() if conv else w
            out[f"{h}{theirs}.bias"] = sd[f"{o}{ours}.bias"]
    out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = sd["norm_f.weight"], sd["norm_f.bias"]
    if not c.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def _llama_to_ours(sd: dict[str, torch.Tensor], c: GPTConfig) -> dict[str, torch.Tensor]:
    """Llama keeps q/k/v and gate/up as separate matrices; lmforge fuses each group into one matmul."""
    take = _Taker(sd, ignore_suffixes=(".rotary_emb.inv_freq",))
    out = {"tok_emb.weight": take("model.embed_tokens.weight")}
    for i in range(c.n_layer):
        h, o = f"model.layers.{i}.", f"blocks.{i}."
        out[f"{o}attn_norm.weight"] = take(f"{h}input_layernorm.weight")
        out[f"{o}mlp_norm.weight"] = take(f"{h}post_attention_layernorm.weight")
        out[f"{o}attn.qkv.weight"] = torch.cat([take(f"{h}self_attn.{x}_proj.weight") for x in "qkv"])
        out[f"{o}attn.proj.weight"] = take(f"{h}self_attn.o_proj.weight")
        out[f"{o}mlp.gate_up.weight"] = torch.cat(
            [take(f"{h}mlp.gate_proj.weight"), take(f"{h}mlp.up_proj.weight")]
        )
        out[f"{o}mlp.proj.weight"] = take(f"{h}mlp.down_proj.weight")
    out["norm_f.weight"] = take("model.norm.weight")
    if not c.tie_embeddings:
        out["lm_head.weight"] = take("lm_head.weight")
    else:
        take.discard("lm_head.weight")
    take.finish()
    return out


def _llama_from_ours(sd: dict[str, torch.Tensor], c: GPTConfig) -> dict[str, torch.Tensor]:
    out = {"model.embed_tokens.weight": sd["tok_emb.weight"]}
    d = c.head_dim
    for i in range(c.n_layer):
        h, o = f"model.layers.{i}.", f"blocks.{i}."
        out[f"{h}input_layernorm.weight"] = sd[f"{o}attn_norm.weight"]
        out[f"{h}post_attention_layernorm.weight"] = sd[f"{o}mlp_norm.weight"]
        q, k, v = sd[f"{o}attn.qkv.weight"].split([c.n_head * d, c.n_kv_head * d, c.n_kv_head * d])
        out[f"{h}self_attn.q_proj.weight"], out[f"{h}self_attn.k_proj.weight"] = q, k
        out[f"{h}self_attn.v_proj.weight"] = v
        out[f"{h}self_attn.o_proj.weight"] = sd[f"{o}attn.proj.weight"]
        gate, up = sd[f"{o}mlp.gate_up.weight"].chunk(2)
        out[f"{h}mlp.gate_proj.weight"], out[f"{h}mlp.up_proj.weight"] = gate, up
        out[f"{h}mlp.down_proj.weight"] = sd[f"{o}mlp.proj.weight"]
    out["model.norm.weight"] = sd["norm_f.weight"]
    if not c.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


class _Taker:
    """Hands out tensors of a foreign state dict by name and reports what was missing or left over."""

    def __init__(self, sd: dict[str, torch.Tensor], ignore_suffixes: tuple[str, ...] = ()):
        self.sd = sd
        self.left = {k for k in sd if not k.endswith(ignore_suffixes)}
        self.missing: list[str] = []

    def __call__(self, name: str) -> torch.Tensor:
        if name not in self.sd:
            self.missing.append(name)
            return torch.empty(0)
        self.left.discard(name)
        return self.sd[name]

    def discard(self, name: str) -> None:
        self.left.discard(name)

    def finish(self) -> None:
        problems = []
        if self.missing:
            problems.append(f"missing tensors: {', '.join(self.missing)}")
        if self.left:
            problems.append(f"unexpected tensors: {', '.join(sorted(self.left))}")
        if problems:
            raise LmforgeError("the Hugging Face checkpoint does not fit its config: " + " | ".join(problems))


FAMILIES = {"gpt2": (_gpt2_to_ours, _gpt2_from_ours), "llama": (_llama_to_ours, _llama_from_ours)}


# --------------------------------------------------------------------------------------------------
# Folders


def read_hf_state_dict(hf_dir: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, a sharded safetensors index, or pytorch_model.bin."""
    if (hf_dir / "model.safetensors").is_file():
        return read_safetensors(hf_dir / "model.safetensors")
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd: dict[str, torch.Tensor] = {}
        for shard in shards:
            sd.update(read_safetensors(hf_dir / shard))
        return sd
    if (hf_dir / "pytorch_model.bin").is_file():
        return torch.load(hf_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise LmforgeError(f"{hf_dir}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def from_hf(hf_dir: str | Path, out_dir: str | Path) -> Path:
    """A local transformers checkpoint folder -> an lmforge model folder (tokenizer carried along)."""
    src = Path(hf_dir)
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise LmforgeError(f"{src}: no config.json; expected a transformers checkpoint folder")
    hf_cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    config = config_from_hf(hf_cfg)
    state = FAMILIES[hf_cfg["model_type"]][0](read_hf_state_dict(src), config)
    with torch.device("meta"):
        expected = model_state_dict(GPT(config))
    check_state_dict(expected, state, str(src))
    with torch.device("meta"):
        model = GPT(config)
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight
    has_tok = (src / "tokenizer.json").is_file() or (src / "vocab.json").is_file()
    tokenizer = Tokenizer.load(src) if has_tok else None
    return save_model(model, tokenizer, out_dir, extra={"converted_from": hf_cfg["model_type"]})


def to_hf(model_dir: str | Path, out_dir: str | Path) -> Path:
    """An lmforge model folder -> a folder ``transformers`` loads with ``from_pretrained``."""
    model, tokenizer = load_model(model_dir)
    config = model.config
    family = hf_model_type(config)
    dtype = model.lm_head.weight.dtype
    state = FAMILIES[family][1](model_state_dict(model), config)
    with atomic_directory(out_dir) as tmp:
        hf_cfg = config_to_hf(config, tokenizer, dtype)
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2), encoding="utf-8")
        save_file(
            {k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"), {"format": "pt"}
        )
        for name in TOKENIZER_FILES:
            if (Path(model_dir) / name).is_file():
                shutil.copy2(Path(model_dir) / name, tmp / name)
        gen = {
            k: hf_cfg[k]
            for k in ("bos_token_id", "eos_token_id", "pad_token_id")
            if hf_cfg.get(k) is not None
        }
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2), encoding="utf-8")
    return Path(out_dir)
