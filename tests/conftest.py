"""Shared fixtures: tiny random-weight transformers checkpoints (no downloads) and a small tokenizer."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

SHARED = Path(os.environ.get("LMFORGE_SHARED", Path(__file__).resolve().parents[2] / "shared"))

if "LMFORGE_CACHE" not in os.environ:  # native kernels build into a folder of this run (models/native.py)
    os.environ["LMFORGE_CACHE"] = tempfile.mkdtemp(prefix="lmforge-test-cache-")
    atexit.register(shutil.rmtree, os.environ["LMFORGE_CACHE"], True)


@pytest.fixture
def one_thread():
    """Tiny models run many small ops: one thread beats waking a pool for each, and is immune to a busy
    machine's thread contention (use with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = SHARED / "data"
    if not d.is_dir():
        pytest.skip(f"shared data not found at {d} (set LMFORGE_SHARED)")
    return d


def corpus_text() -> str:
    """English prose that ships with every CPython: the reference manual's topics (PSF licence)."""
    import pydoc_data.topics

    return "\n\n".join(pydoc_data.topics.topics.values())


@pytest.fixture(scope="session")
def bpe_tokenizer():
    """A byte-level BPE tokenizer (vocab 300) trained in-process, with bos/eos/pad/unk."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from lmforge.tokenizer.core import Tokenizer

    backend = HFTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([corpus_text()[:200_000]], trainer)
    roles = {"pad_token": "<|pad|>", "bos_token": "<|bos|>", "eos_token": "<|eos|>", "unk_token": "<|unk|>"}
    return Tokenizer(backend, roles)


def _save_hf(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save(path)
    return path


@pytest.fixture(scope="session")
def hf_gpt2_dir(tmp_path_factory, bpe_tokenizer) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=bpe_tokenizer.vocab_size,
        n_positions=128,
        n_embd=64,
        n_layer=2,
        n_head=4,
        bos_token_id=bpe_tokenizer.bos_id,
        eos_token_id=bpe_tokenizer.eos_id,
        initializer_range=0.3,  # large weights: well-separated logits, so greedy has no near-ties
    )
    return _save_hf(GPT2LMHeadModel(cfg).eval(), bpe_tokenizer, tmp_path_factory.mktemp("hf") / "gpt2")


@pytest.fixture(scope="session")
def hf_llama_dir(tmp_path_factory, bpe_tokenizer) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=bpe_tokenizer.vocab_size,
        max_position_embeddings=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=10000.0,
        bos_token_id=bpe_tokenizer.bos_id,
        eos_token_id=bpe_tokenizer.eos_id,
        initializer_range=0.3,  # large weights: well-separated logits, so greedy has no near-ties
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # HF initialises norms to 1: randomise them so the test sees their weights
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return _save_hf(model, bpe_tokenizer, tmp_path_factory.mktemp("hf") / "llama")


@pytest.fixture(scope="session")
def lmf_gpt2_dir(tmp_path_factory, hf_gpt2_dir) -> Path:
    from lmforge.hf.convert import from_hf

    return from_hf(hf_gpt2_dir, tmp_path_factory.mktemp("lmf") / "gpt2")


@pytest.fixture(scope="session")
def lmf_llama_dir(tmp_path_factory, hf_llama_dir) -> Path:
    from lmforge.hf.convert import from_hf

    return from_hf(hf_llama_dir, tmp_path_factory.mktemp("lmf") / "llama")


def tiny_bert_folder(tokenizer, folder: Path, n_layer: int = 1) -> Path:
    """A random-weight BERT (with its MLM head) saved with ``tokenizer``: the pretrained folder task tests
    fine-tune from."""
    from lmforge.models.bert import Bert, BertConfig
    from lmforge.models.io import save_model

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=tokenizer.vocab_size, max_seq_len=32, n_layer=n_layer, n_head=2, d_model=32, d_ff=64
    )
    return save_model(Bert(cfg), tokenizer, folder)


def uncached_greedy(model, prompt: list[int], n: int) -> list[int]:
    """Re-run the whole sequence every step: the definition that the KV cache must reproduce."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt) :]
