"""Hugging Face interop: logits match to 1e-4 (fp32) both ways; bad checkpoints fail loudly."""

import json
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.hf import registry
from lmforge.hf.convert import from_hf, to_hf
from lmforge.hf.gpt2 import GPT2Adapter
from lmforge.hf.llama import LlamaAdapter
from lmforge.models.gpt import GPTConfig
from lmforge.models.io import load_model, read_model_config

FAMILIES = ["hf_gpt2_dir", "hf_llama_dir"]


def _ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (3, 40), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family", FAMILIES)
def test_import_matches_transformers_logits(family, request, tmp_path):
    hf_dir = request.getfixturevalue(family)
    hf = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    out = from_hf(hf_dir, tmp_path / "lmf")
    model, tok = load_model(out)
    x = _ids(model.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=1e-4, rtol=0)
    hf_tok = PreTrainedTokenizerFast.from_pretrained(hf_dir)
    assert tok.eos_id is not None and tok.encode("def f(x): 中文") == hf_tok("def f(x): 中文")["input_ids"]


@pytest.mark.parametrize("family", FAMILIES)
def test_export_loads_in_transformers(family, request, tmp_path):
    hf_dir = request.getfixturevalue(family)
    lmf = from_hf(hf_dir, tmp_path / "lmf")
    torch.manual_seed(3)
    model, _ = load_model(lmf)
    with torch.no_grad():  # perturb so the exported weights differ from the original ones
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    from lmforge.models.io import save_model
    from lmforge.tokenizer.core import Tokenizer

    save_model(model, Tokenizer.load(lmf), tmp_path / "lmf2")
    # the CLI does the export
    assert main(["convert", "--to-hf", str(tmp_path / "lmf2"), str(tmp_path / "back")]) == 0
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    x = _ids(model.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-4, rtol=0)
    hf_tok = PreTrainedTokenizerFast.from_pretrained(tmp_path / "back")
    ours = Tokenizer.load(lmf)
    text = "for i in range(10):\n    print('héllo, 世界')"
    assert hf_tok(text)["input_ids"] == ours.encode(text)
    assert hf_tok.eos_token == "<|eos|>"


def test_round_trip_is_exact(lmf_llama_dir, tmp_path):
    to_hf(lmf_llama_dir, tmp_path / "hf")
    from_hf(tmp_path / "hf", tmp_path / "again")
    a = load_file(str(lmf_llama_dir / "model.safetensors"))
    b = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_missing_and_misshaped_tensors_are_named(hf_gpt2_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(hf_gpt2_dir, bad)
    sd = load_file(str(bad / "model.safetensors"))
    del sd["transformer.h.1.mlp.c_fc.bias"]
    sd["transformer.h.0.attn.c_proj.weight"] = torch.zeros(3, 3)
    sd["transformer.extra.weight"] = torch.zeros(1)
    save_file(sd, str(bad / "model.safetensors"))
    with pytest.raises(LmforgeError) as e:
        from_hf(bad, tmp_path / "out")
    msg = str(e.value)
    assert "transformer.h.1.mlp.c_fc.bias" in msg and "transformer.extra.weight" in msg
    assert not (tmp_path / "out").exists()


def test_shape_mismatch_in_lmforge_folder(lmf_gpt2_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(lmf_gpt2_dir, bad)
    meta = json.loads((bad / "config.json").read_text())
    meta["model"]["d_ff"] = 128
    (bad / "config.json").write_text(json.dumps(meta))
    with pytest.raises(
        LmforgeError, match=r"shape mismatches: blocks\.0\.mlp\.fc\.bias: checkpoint \(256,\) vs model"
    ):
        load_model(bad)


def test_corrupt_checkpoint_is_an_error(lmf_gpt2_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(lmf_gpt2_dir, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(LmforgeError, match="cannot read safetensors"):
        load_model(bad)
    assert main(["generate", str(bad), "--prompt", "x"]) == 2


def test_unsupported_config_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(LmforgeError, match="model_type 'mamba' is not supported"):
        from_hf(tmp_path, tmp_path / "out")


def test_model_folder_is_written_atomically(lmf_gpt2_dir, tmp_path, monkeypatch):
    import lmforge.models.io as io

    model, tok = load_model(lmf_gpt2_dir)
    out = io.save_model(model, tok, tmp_path / "m")
    before = (out / "model.safetensors").read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(io, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        io.save_model(model, tok, out)
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_registry_dispatches_by_model_type(tmp_path):
    assert registry.model_types() == ["bart", "bert", "gpt2", "llama", "marian"]
    for model_type, cls in [("gpt2", GPT2Adapter), ("llama", LlamaAdapter)]:
        adapter = registry.by_model_type(model_type)
        assert type(adapter) is cls and adapter.model_type == model_type and adapter.lmforge_arch == "gpt"
    with pytest.raises(
        LmforgeError, match="model_type 'mamba' is not supported; supported: bart, bert, gpt2, llama, marian"
    ):
        registry.by_model_type("mamba")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(
        LmforgeError,
        match=r"config\.json: model_type 't5' is not supported; supported: bart, bert, gpt2, llama, marian",
    ):
        from_hf(tmp_path, tmp_path / "out")


def test_export_picks_the_family_that_fits_the_config():
    gpt2 = GPTConfig(vocab_size=32, max_seq_len=8, n_layer=1, n_head=2, d_model=16)
    llama = replace(gpt2, n_kv_head=1, pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False)
    assert type(registry.for_config(gpt2)) is GPT2Adapter
    assert type(registry.for_config(llama)) is LlamaAdapter
    mixed = replace(gpt2, norm="rmsnorm")
    why = r"gpt2: norm='rmsnorm' \(needs 'layernorm'\); llama: pos_emb='learned' \(needs 'rope'\), mlp="
    with pytest.raises(LmforgeError, match=why):
        registry.for_config(mixed)


@pytest.mark.parametrize(
    ("lmf_fixture", "hf_fixture"), [("lmf_gpt2_dir", "hf_gpt2_dir"), ("lmf_llama_dir", "hf_llama_dir")]
)
def test_tensor_mapping_round_trips(lmf_fixture, hf_fixture, request):
    lmf, hf_dir = request.getfixturevalue(lmf_fixture), request.getfixturevalue(hf_fixture)
    config = read_model_config(lmf)
    adapter = registry.for_config(config)
    ours = load_file(str(lmf / "model.safetensors"))
    back = adapter.state_from_hf(adapter.state_to_hf(ours, config), config)
    assert back.keys() == ours.keys() and all(torch.equal(back[k], ours[k]) for k in ours)
    # The other way round, from the tensors transformers itself wrote.
    theirs = load_file(str(hf_dir / "model.safetensors"))
    theirs = {k: v for k, v in theirs.items() if not adapter.ignored(k, config)}
    again = adapter.state_to_hf(adapter.state_from_hf(theirs, config), config)
    assert again.keys() == theirs.keys() and all(torch.equal(again[k], theirs[k]) for k in theirs)


def test_gpt2_checkpoint_without_module_prefix(hf_gpt2_dir, lmf_gpt2_dir, tmp_path):
    bare = tmp_path / "bare"  # what a GPT2Model (no LM head) saves
    shutil.copytree(hf_gpt2_dir, bare)
    sd = load_file(str(bare / "model.safetensors"))
    save_file({k.removeprefix("transformer."): v for k, v in sd.items()}, str(bare / "model.safetensors"))
    a = load_file(str(lmf_gpt2_dir / "model.safetensors"))
    b = load_file(str(from_hf(bare, tmp_path / "out") / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_config_errors_name_the_file_and_field(hf_gpt2_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(hf_gpt2_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "activation_function": "relu"}))
    with pytest.raises(LmforgeError, match=r"bad/config\.json: GPT-2 activation_function 'relu'"):
        from_hf(bad, tmp_path / "out")
    del cfg["n_head"]
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LmforgeError, match=r"bad/config\.json: missing field 'n_head'"):
        from_hf(bad, tmp_path / "out")


def test_converting_without_a_tokenizer_says_so_at_once(hf_gpt2_dir, tmp_path, capsys):
    weights_only = tmp_path / "w"
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(hf_gpt2_dir / name, weights_only / name)
    out = from_hf(weights_only, tmp_path / "lmf")
    assert f"warning: {weights_only} has no tokenizer" in capsys.readouterr().err
    to_hf(out, tmp_path / "back")
    assert f"warning: {out} has no tokenizer" in capsys.readouterr().err
    from_hf(hf_gpt2_dir, tmp_path / "with")  # a folder with its tokenizer converts without a word
    assert "warning" not in capsys.readouterr().err


def test_convert_never_wipes_a_folder_it_did_not_write(lmf_gpt2_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["convert", "--to-hf", str(lmf_gpt2_dir), str(out)]) == 2
    assert "holds files lmforge did not write (keep.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert main(["convert", "--to-hf", str(lmf_gpt2_dir), str(out), "--overwrite"]) == 0
    assert (out / "keep.txt").read_text() == "mine" and (out / "model.safetensors").is_file()
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["convert", "--to-hf", str(lmf_gpt2_dir), "."]) == 0  # --out . : in place, nothing left over
    assert (here / "config.json").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["here", "out"]


@pytest.mark.parametrize("how", ["load", "convert"])
def test_loading_a_model_folder_draws_nothing_and_imports_no_compiler(
    how, lmf_llama_dir, hf_llama_dir, tmp_path
):
    """The model is built on the meta device without initial draws or table arithmetic (the file's tensors
    replace them; the first operation on a meta tensor imports PyTorch's compiler, 0.8 s a process), when
    a folder loads and when a transformers checkpoint converts; the weights are the checkpoint's."""
    step = {
        "load": f"from lmforge.models.io import load_model; load_model({str(lmf_llama_dir)!r})",
        "convert": "from lmforge.hf.convert import from_hf; "
        f"from_hf({str(hf_llama_dir)!r}, {str(tmp_path / 'o')!r})",
    }[how]
    code = (
        f"import sys, torch; {step}\nprint('torch._dynamo' in sys.modules, torch.nn.init.normal_.__module__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "torch.nn.init"]
    model, _ = load_model(lmf_llama_dir if how == "load" else tmp_path / "o")
    saved = load_file(lmf_llama_dir / "model.safetensors")  # converted from hf_llama_dir before
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in saved.items())
    rope = model.rope
    fresh = type(rope)(rope.head_dim, rope.max_seq_len, rope.theta)
    assert torch.equal(rope.cos, fresh.cos) and torch.equal(rope.sin, fresh.sin)


def test_a_model_built_in_another_thread_meanwhile_is_drawn():
    """skeleton() skips initial draws in its own thread only: a model built elsewhere at the same time gets
    its random weights, and nn.init.normal_ is PyTorch's again after the last block closes."""
    import threading

    from lmforge.models.io import skeleton

    inside, done = threading.Event(), threading.Event()

    def hold():
        with skeleton():
            inside.set()
            done.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    inside.wait(10)
    layer = torch.nn.Embedding(64, 8)  # nn.Embedding draws its weights through nn.init.normal_
    done.set()
    holder.join()
    assert layer.weight.std() > 0.5
    assert torch.nn.init.normal_.__module__ == "torch.nn.init"
