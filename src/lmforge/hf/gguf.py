"""GGUF (llama.cpp's model file) -> an lmforge model folder, for the Llama family.

The ``gguf`` package reads the file and dequantizes every tensor to fp32 (F32/F16/BF16 and the block
formats it knows: Q8_0, Q4_0, Q4_1, Q4_K, Q6_K, ...). Tensors are renamed to transformers' Llama names,
the query and key rows un-permuted (llama.cpp's converter interleaves each head's rotary pairs, which
transformers keeps as two halves), and go through the Llama adapter as a transformers checkpoint would.
The tokenizer is rebuilt from the file's metadata as transformers builds it from the same file:
byte-level BPE (``tokenizer.ggml.model = gpt2``) from its tokens and merges, control tokens special.
To make the converted model small again: ``lmforge quantize``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from lmforge.errors import LmforgeError
from lmforge.hf.convert import convert_state
from lmforge.hf.registry import by_model_type
from lmforge.tokenizer.core import Tokenizer

# GGUF tensor name (per block: blk.{i}.NAME) -> transformers' Llama name
GLOBAL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
BLOCK = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
CONTROL = 3  # tokenizer.ggml.token_type of a control token (<|im_start|>, </s>, ...)
# How the BPE vocabularies llama.cpp names (tokenizer.ggml.pre) split text before merging, where that is
# not GPT-2's own rule (transformers' table, for the Llama-3 family).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLITS = {name: LLAMA3_SPLIT for name in ("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx")}


def read_gguf(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The file's metadata {key: value} and its tensors {name: fp32 array in PyTorch's (out, in) order}."""
    try:
        from gguf import GGUFReader
        from gguf.quants import dequantize
    except ImportError:
        raise LmforgeError("reading GGUF needs the gguf package: pip install 'lmforge[gguf]'") from None
    try:
        reader = GGUFReader(str(path))
    except (OSError, ValueError) as e:
        raise LmforgeError(f"{path}: not a readable GGUF file ({e})") from None
    fields = {key: field.contents() for key, field in reader.fields.items()}
    tensors = {}
    for t in reader.tensors:
        try:
            values = dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise LmforgeError(
                f"{path}: tensor {t.name} is {t.tensor_type.name}, which gguf cannot dequantize"
            ) from None
        tensors[t.name] = np.asarray(values, dtype=np.float32).reshape(tuple(reversed(t.shape.tolist())))
    return fields, tensors


def llama_config(fields: dict[str, Any], tensors: dict[str, np.ndarray], path: str | Path) -> dict[str, Any]:
    """transformers' LlamaConfig fields from the ``llama.*`` metadata."""
    arch = fields.get("general.architecture")
    if arch != "llama":
        raise LmforgeError(f"{path}: general.architecture is {arch!r}; lmforge converts llama GGUF files")

    def get(key: str, default: Any = None) -> Any:
        value = fields.get(f"llama.{key}", default)
        if value is None:
            raise LmforgeError(f"{path}: metadata llama.{key} is missing")
        return value

    d_model, heads = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = int(fields.get("llama.rope.dimension_count") or d_model // heads)
    return {
        "model_type": "llama",
        "vocab_size": int(fields.get("llama.vocab_size") or tensors["token_embd.weight"].shape[0]),
        "max_position_embeddings": int(get("context_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv", heads)),
        "hidden_size": d_model,
        "intermediate_size": int(get("feed_forward_length")),
        "head_dim": head_dim,
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "tie_word_embeddings": "output.weight" not in tensors,
    }


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's rotary permutation of q/k rows: per head, (pairs, 2) -> (2, pairs) halves."""
    out, rest = w.shape[0], w.shape[1:]
    return w.reshape(heads, out // heads // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def llama_state(tensors: dict[str, np.ndarray], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors in transformers' Llama names and layout."""
    state = {}
    for name, w in tensors.items():
        if name in GLOBAL:
            state[GLOBAL[name]] = w
            continue
        block, _, rest = name.partition(".")[2].partition(".")
        if not name.startswith("blk.") or rest not in BLOCK:
            state[name] = w  # reported by the adapter's strict check as unexpected
            continue
        if rest == "attn_q.weight":
            w = unpermute(w, config["num_attention_heads"])
        elif rest == "attn_k.weight":
            w = unpermute(w, config["num_key_value_heads"])
        state[f"model.layers.{block}.{BLOCK[rest]}"] = w
    # (F32 tensors are read-only views of the file; dequantized ones are fresh arrays)
    return {k: torch.from_numpy(np.array(v, copy=not v.flags.writeable, order="C")) for k, v in state.items()}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, in which byte-level BPE vocabularies are spelled."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars)))


def gguf_tokenizer(fields: dict[str, Any], path: str | Path) -> Tokenizer:
    """The byte-level BPE tokenizer the metadata describes, with its bos/eos/pad/unk tokens."""
    kind = fields.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise LmforgeError(
            f"{path}: tokenizer.ggml.model is {kind!r}; lmforge rebuilds byte-level BPE ('gpt2')"
        )
    tokens: list[str] = list(fields["tokenizer.ggml.tokens"])
    types = list(fields.get("tokenizer.ggml.token_type") or [])
    spell = bytes_to_unicode()
    alphabet = set(spell.values())
    vocab = {
        t if set(t) <= alphabet else "".join(spell[b] for b in t.encode("utf-8")): i
        for i, t in enumerate(tokens)
    }
    merges = [tuple(m.split(" ")) for m in fields.get("tokenizer.ggml.merges") or []]
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    split = SPLITS.get(fields.get("tokenizer.ggml.pre"))
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    backend.decoder = decoders.ByteLevel()
    control = [t for t, kind in zip(tokens, types) if kind == CONTROL and set(t) <= alphabet]
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    roles = {"bos_token": "bos", "eos_token": "eos", "pad_token": "padding", "unk_token": "unknown"}
    special = {}
    for role, key in roles.items():
        index = fields.get(f"tokenizer.ggml.{key}_token_id")
        if index is not None and 0 <= int(index) < len(tokens):
            special[role] = tokens[int(index)]
    template = fields.get("tokenizer.chat_template")
    return Tokenizer(backend, special, template if isinstance(template, str) and template else None)


def from_gguf(path: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """A Llama-family GGUF file -> an lmforge model folder (fp32 weights, tokenizer from the metadata)."""
    fields, tensors = read_gguf(path)
    hf_config = llama_config(fields, tensors, path)
    adapter = by_model_type("llama")
    config = adapter.config_from_hf(hf_config)
    tokenizer = gguf_tokenizer(fields, path)
    extra = {"converted_from": "gguf", "gguf_file_type": fields.get("general.file_type")}
    state = llama_state(tensors, hf_config)
    return convert_state(adapter, config, state, tokenizer, out_dir, overwrite, extra, f"{path}")
