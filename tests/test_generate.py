"""Generation: cached greedy == uncached greedy == transformers' greedy, token for token."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import uncached_greedy
from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.infer.cpu import ENGINES_KEY
from lmforge.infer.generate import complete, decode_steps, generate, generate_ids, stream_batch
from lmforge.infer.sampling import GenerationConfig, apply_repetition_penalty, top_k_filter, top_p_filter
from lmforge.models.io import load_model

FAMILIES = [("hf_gpt2_dir", "lmf_gpt2_dir"), ("hf_llama_dir", "lmf_llama_dir")]
PROMPTS = [[5, 17, 42, 99, 7, 250, 3], [11, 12], [200, 150, 100, 50, 25]]
NEW = 24


def hf_greedy(hf, prompts: list[list[int]], n: int, pad: int) -> list[list[int]]:
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    hf.generation_config.eos_token_id = None
    out = hf.generate(
        ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad
    )
    return out[:, width:].tolist()


@pytest.mark.parametrize(("hf_fixture", "lmf_fixture"), FAMILIES)
def test_greedy_parity_cached_uncached_transformers(hf_fixture, lmf_fixture, request):
    hf = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(hf_fixture)).eval()
    model, _ = load_model(request.getfixturevalue(lmf_fixture))
    cfg = GenerationConfig(max_new_tokens=NEW, temperature=0, stop_at_eos=False)
    expected = [uncached_greedy(model, p, NEW) for p in PROMPTS]
    # one at a time, and as one left-padded batch; over the growing cache and the fixed-shape engine
    for mode in ("eager", "static"):
        assert [generate_ids(model, [p], cfg, mode=mode)[0] for p in PROMPTS] == expected
        assert generate_ids(model, PROMPTS, cfg, mode=mode) == expected
    assert hf_greedy(hf, PROMPTS, NEW, pad=0) == expected
    assert [hf_greedy(hf, [p], NEW, pad=0)[0] for p in PROMPTS] == expected


def test_cache_makes_decode_steps_cost_one_token(lmf_gpt2_dir):
    """Each decode step feeds the model one new token per row, whatever the prefix length."""
    model, _ = load_model(lmf_gpt2_dir)
    seen = []
    hook = model.tok_emb.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    cfg = GenerationConfig(max_new_tokens=6, temperature=0, stop_at_eos=False)
    list(decode_steps(model, [[1, 2, 3, 4, 5]], cfg))
    hook.remove()
    assert seen == [(1, 5)] + [(1, 1)] * 5


def test_seeded_sampling_is_reproducible(lmf_llama_dir):
    model, _ = load_model(lmf_llama_dir)
    kw = dict(max_new_tokens=20, temperature=0.9, top_k=50, top_p=0.9, seed=7, stop_at_eos=False)
    a, b = (
        generate_ids(model, PROMPTS, GenerationConfig(**kw)),
        generate_ids(model, PROMPTS, GenerationConfig(**kw)),
    )
    c = generate_ids(model, PROMPTS, GenerationConfig(**{**kw, "seed": 8}))
    assert a == b and a != c


def test_filters_match_their_definitions():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.5, -1.0]])
    assert torch.isinf(top_k_filter(logits, 2)).tolist() == [[True, False, False, True, True]]
    p = logits.softmax(-1)[0]  # sorted: 3.0 (.60), 2.0 (.22), 1.0 (.08), ...
    keep2 = float(p[1] + p[2])
    assert torch.isinf(top_p_filter(logits, float(p[1]) - 1e-3)).tolist() == [[True, False, True, True, True]]
    assert torch.isinf(top_p_filter(logits, keep2 - 1e-3)).tolist() == [[True, False, False, True, True]]
    assert torch.isinf(top_p_filter(logits, keep2 + 1e-3)).tolist() == [[False, False, False, True, True]]
    pen = apply_repetition_penalty(logits, torch.tensor([[1, 4, 4]]), 2.0)
    assert pen.tolist() == [[1.0, 1.5, 2.0, 0.5, -2.0]]


def test_repetition_penalty_matches_transformers():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    logits = torch.randn(2, 50)
    history = torch.randint(0, 50, (2, 12))
    theirs = RepetitionPenaltyLogitsProcessor(1.3)(history, logits.clone())
    torch.testing.assert_close(apply_repetition_penalty(logits, history, 1.3), theirs)


def test_stop_strings_eos_and_streaming(lmf_gpt2_dir):
    model, tok = load_model(lmf_gpt2_dir)
    free = complete(model, tok, ["The function"], max_new_tokens=30, temperature=0, stop_at_eos=False)[0]
    assert free.finish_reason == "length" and len(free.token_ids) == 30
    stop = free.text[5:8]
    cut = complete(model, tok, ["The function"], max_new_tokens=30, temperature=0, stop=[stop])[0]
    assert cut.finish_reason == "stop" and cut.text == free.text[: free.text.find(stop)]
    streamed = "".join(
        d for _, d in stream_batch(model, tok, ["The function"], max_new_tokens=30, temperature=0)
    )
    assert streamed == generate(model, tok, "The function", max_new_tokens=30, temperature=0)
    # eos ends a row: make eos the greedy choice by raising its logit
    model.lm_head.register_forward_hook(lambda m, i, out: out.index_fill(-1, torch.tensor([tok.eos_id]), 1e4))
    ended = complete(model, tok, ["The function"], max_new_tokens=10, temperature=0)[0]
    assert ended.finish_reason == "stop" and ended.token_ids == [] and ended.text == ""


def test_prompt_longer_than_context(lmf_gpt2_dir):
    model, _ = load_model(lmf_gpt2_dir)
    long = list(range(1, 121))  # context is 128
    with pytest.raises(LmforgeError, match="exceeds the model's context window of 128"):
        generate_ids(model, [long], GenerationConfig(max_new_tokens=10, temperature=0))
    cut = generate_ids(model, [long], GenerationConfig(max_new_tokens=10, temperature=0, truncate="left"))
    assert cut == generate_ids(model, [long[-118:]], GenerationConfig(max_new_tokens=10, temperature=0))


def test_cli_generate(lmf_llama_dir, capsys):
    args = ["generate", str(lmf_llama_dir), "--prompt", "x = ", "--max-new-tokens", "8", "--temperature", "0"]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert main([*args, "--stream"]) == 0
    assert capsys.readouterr().out == plain
    assert plain.startswith("x = ") and len(plain) > len("x = \n")
    assert main([*args[:-2], "--temperature", "-1"]) == 2


@pytest.mark.parametrize("lmf_fixture", ["lmf_gpt2_dir", "lmf_llama_dir"])
def test_compiled_engine_matches_eager(lmf_fixture, request):
    """The fixed-shape step compiles as one graph (what CUDA graphs replay) and decodes identically."""
    model, _ = load_model(request.getfixturevalue(lmf_fixture))
    cfg = GenerationConfig(max_new_tokens=12, temperature=0, stop_at_eos=False)
    expected = generate_ids(model, PROMPTS, cfg, mode="eager")
    assert generate_ids(model, PROMPTS, cfg, mode="compiled") == expected
    assert generate_ids(model, PROMPTS[:1] * 3, cfg, mode="compiled") == [expected[0]] * 3
    assert len(model.__dict__[ENGINES_KEY]) == 1  # same batch and length: the compiled engine was reused


def test_eos_ends_each_row_on_its_own(lmf_gpt2_dir):
    model, _ = load_model(lmf_gpt2_dir)
    greedy = GenerationConfig(max_new_tokens=NEW, temperature=0, stop_at_eos=False)
    free = generate_ids(model, PROMPTS, greedy)
    eos = free[0][3]  # a token row 0 produces at step 3: pretend it is eos
    cut = generate_ids(model, PROMPTS, GenerationConfig(max_new_tokens=NEW, temperature=0), eos_id=eos)
    assert cut == [row[: row.index(eos)] if eos in row else row for row in free]
    assert len(cut[0]) <= 3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_packed_cpu_decode_matches_plain_linear(lmf_gpt2_dir, dtype, monkeypatch):
    """oneDNN-packed weights (infer/cpu.py) change the speed of CPU decoding, not its tokens."""
    import lmforge.infer.engine as engine
    from lmforge.infer.cpu import packed_for_decode, packing_rows

    model, _ = load_model(lmf_gpt2_dir)
    model = model.to(dtype)
    prompts = PROMPTS * 2  # 4+ rows: fp32 packs from 4 rows on
    if packing_rows(model) is None:
        pytest.skip("oneDNN packing unavailable for this dtype on this CPU")
    ids = torch.tensor([p[:2] for p in prompts])
    twin = packed_for_decode(model, len(prompts))
    assert any(type(m).__name__ == "PackedLinear" for m in twin.modules())
    with torch.inference_mode():
        want, got = model(ids).float(), twin(ids).float()
    assert torch.allclose(got, want, atol=1e-4 if dtype == torch.float32 else 0.0, rtol=1e-4)
    cfg = GenerationConfig(max_new_tokens=NEW, temperature=0, stop_at_eos=False)
    packed = generate_ids(model, prompts, cfg, mode="eager")
    monkeypatch.setattr(engine, "packing_rows", lambda *_: None)
    assert generate_ids(model, prompts, cfg, mode="eager") == packed
    # Hooks and training mode would be bypassed by a copy: those models decode unpacked.
    handle = model.lm_head.register_forward_hook(lambda module, args, out: out)
    assert packing_rows(model) is None
    handle.remove()
    assert packing_rows(model.train()) is None
    model.eval()
    # A weight update (training, loading) invalidates the packed copy.
    with torch.no_grad():
        model.lm_head.weight.mul_(2)
    assert packed_for_decode(model, len(prompts)) is not twin


def test_cli_stop_escapes_and_a_readable_stream_of_several_prompts(lmf_llama_dir, capsys):
    """--stop "\\n" as a shell passes it (backslash, n) stops at a newline; --stream with several prompts
    prints each row whole under its header, like the non-streamed output."""
    model, tok = load_model(lmf_llama_dir)
    free = complete(model, tok, ["x = "], max_new_tokens=40, temperature=0, stop_at_eos=False)[0].text
    stop = free[3:5]
    typed = stop.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")  # as the shell hands it over
    base = [
        "generate",
        str(lmf_llama_dir),
        "--max-new-tokens",
        "40",
        "--temperature",
        "0",
        "stop_at_eos=false",
    ]
    assert main([*base, "--prompt", "x = ", "--stop", typed]) == 0
    assert capsys.readouterr().out == "x = " + free[: free.find(stop)] + "\n"
    several = [*base, "--prompt", "x = ", "--prompt", "def f(", "--prompt", "import "]
    assert main([*several, "--stream"]) == 0
    streamed = capsys.readouterr().out
    texts = [
        c.text
        for c in complete(
            model, tok, ["x = ", "def f(", "import "], max_new_tokens=40, temperature=0, stop_at_eos=False
        )
    ]
    assert streamed == "".join(
        f"--- [{i}] {p}{t}\n" for i, (p, t) in enumerate(zip(["x = ", "def f(", "import "], texts))
    )
    from lmforge.infer.config import GenerateConfig

    assert GenerateConfig(prompt=["a"], stop=["\\n\\n", "a\\tb", "c\\\\n"]).stop == ["\n\n", "a\tb", "c\\n"]


def test_a_model_stays_an_ordinary_module_after_packed_cpu_decoding(lmf_gpt2_dir):
    """The packed copy lives beside the model, so deepcopy (and pickling) still work after generating."""
    import copy

    model, tok = load_model(lmf_gpt2_dir)
    first = complete(model, tok, ["a", "b", "c", "d"], max_new_tokens=4, temperature=0)
    twin = copy.deepcopy(model)
    assert [c.text for c in complete(twin, tok, ["a", "b", "c", "d"], max_new_tokens=4, temperature=0)] == [
        c.text for c in first
    ]
