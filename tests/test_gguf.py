"""GGUF import: a tiny Llama written with gguf's own writer (llama.cpp's layout: q/k rows permuted,
block-quantized tensors, the tokenizer in the metadata) converts to a model that matches the original
exactly (fp32 file) and transformers loading the same file (quantized file), token for token."""

import json

import numpy as np
import pytest
import torch

from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.infer.generate import generate_ids
from lmforge.infer.sampling import GenerationConfig
from lmforge.models.io import load_model
from lmforge.tokenizer.chat import CHATML

gguf = pytest.importorskip("gguf")
pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = {  # transformers' Llama name (per layer after "model.layers.{i}.") -> GGUF name
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
TEXT = "the quick brown fox jumps over the lazy dog"


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter: each head's rotary halves interleaved as pairs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(hf_dir, tokenizer, path, quantized: bool):
    """The HF checkpoint in ``hf_dir`` as llama.cpp would write it: matrices Q8_0/Q4_0/Q4_1 when
    ``quantized``, norms F32."""
    from safetensors.torch import load_file

    config = json.loads((hf_dir / "config.json").read_text())
    state = {k: v.float().numpy() for k, v in load_file(str(hf_dir / "model.safetensors")).items()}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(config["num_hidden_layers"])
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config["num_key_value_heads"])
    w.add_rope_freq_base(config.get("rope_theta", 10000.0))
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_vocab_size(config["vocab_size"])
    model = json.loads(tokenizer.backend.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    special = {t for t in tokens if t.startswith("<|")}
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in model["merges"]])
    w.add_bos_token_id(tokenizer.bos_id)
    w.add_eos_token_id(tokenizer.eos_id)
    w.add_pad_token_id(tokenizer.pad_id)
    w.add_chat_template(CHATML)
    types = [gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1]
    tensors = {
        "token_embd.weight": state["model.embed_tokens.weight"],
        "output_norm.weight": state["model.norm.weight"],
    }
    if "lm_head.weight" in state and not config.get("tie_word_embeddings"):
        tensors["output.weight"] = state["lm_head.weight"]
    for i in range(config["num_hidden_layers"]):
        for hf_name, name in NAMES.items():
            t = state[f"model.layers.{i}.{hf_name}"]
            if name == "attn_q.weight":
                t = permute(t, config["num_attention_heads"])
            elif name == "attn_k.weight":
                t = permute(t, config["num_key_value_heads"])
            tensors[f"blk.{i}.{name}"] = t
    for n, (name, t) in enumerate(tensors.items()):
        if quantized and t.ndim == 2:
            qtype = types[n % len(types)]
            w.add_tensor(name, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, np.ascontiguousarray(t, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_fp32_gguf_is_the_original_model(hf_llama_dir, bpe_tokenizer, tmp_path):
    """Un-permuting q/k and renaming recover the checkpoint exactly: logits equal the original's."""
    from transformers import LlamaForCausalLM

    file = write_gguf(hf_llama_dir, bpe_tokenizer, tmp_path / "tiny.gguf", quantized=False)
    assert main(["convert", "--from-gguf", str(file), str(tmp_path / "lmf")]) == 0
    model, tokenizer = load_model(tmp_path / "lmf")
    ids = tokenizer.encode(TEXT)
    assert ids == bpe_tokenizer.encode(TEXT)
    assert tokenizer.eos_id == bpe_tokenizer.eos_id and tokenizer.bos_id == bpe_tokenizer.bos_id
    assert tokenizer.chat_template == CHATML  # kept from the metadata, saved in tokenizer_config.json
    hf = LlamaForCausalLM.from_pretrained(hf_llama_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model(torch.tensor([ids])), hf(torch.tensor([ids])).logits, atol=1e-4, rtol=1e-4
        )


def test_quantized_gguf_matches_transformers_loading_it(hf_llama_dir, bpe_tokenizer, tmp_path):
    """Q8_0/Q4_0/Q4_1 blocks dequantized as transformers does: same logits, same greedy tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    file = write_gguf(hf_llama_dir, bpe_tokenizer, tmp_path / "tiny-q.gguf", quantized=True)
    assert main(["convert", "--from-gguf", str(file), str(tmp_path / "lmf")]) == 0
    model, tokenizer = load_model(tmp_path / "lmf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=file.name, dtype=torch.float32).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=file.name)
    ids = hf_tokenizer(TEXT)["input_ids"]
    assert tokenizer.encode(TEXT) == ids
    with torch.no_grad():
        torch.testing.assert_close(
            model(torch.tensor([ids])), hf(torch.tensor([ids])).logits, atol=1e-4, rtol=1e-4
        )
        want = hf.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False, eos_token_id=None)
    cfg = GenerationConfig(max_new_tokens=10, temperature=0, stop_at_eos=False)
    assert generate_ids(model, [ids], cfg)[0] == want[0, len(ids) :].tolist()


def test_not_a_llama_gguf_is_refused(tmp_path):
    path = tmp_path / "gpt2.gguf"
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    from lmforge.hf.gguf import from_gguf

    with pytest.raises(LmforgeError, match="llama"):
        from_gguf(path, tmp_path / "out")
