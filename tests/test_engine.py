"""The inference engine: continuous batching gives every request the tokens it gets when served alone."""

import pytest
import torch

from conftest import uncached_greedy
from lmforge.errors import LmforgeError
from lmforge.infer.detok import IncrementalDetokenizer, TextTracker
from lmforge.infer.engine import Engine
from lmforge.infer.generate import generate_ids
from lmforge.infer.sampling import GenerationConfig, SamplingParams, sample_rows
from lmforge.models.io import load_model

PROMPTS = [[5, 17, 42, 99, 7, 250, 3], [11, 12], [200, 150, 100, 50, 25], [9], [31, 41, 59, 26]]


pytestmark = pytest.mark.usefixtures("one_thread")


def run(engine: Engine, arrivals: dict[int, list[tuple[list[int], SamplingParams]]]) -> dict:
    """Step the engine, adding arrivals[k] before step k; {request id: (tokens, text, finish reason)}."""
    out: dict[int, tuple[list[int], str, str | None]] = {}
    order, step = [], 0
    while step <= max(arrivals, default=0) or engine.has_work():
        for prompt, params in arrivals.get(step, []):
            rid = engine.add_request(prompt, params)
            out[rid] = ([], "", None)
            order.append(rid)
        for o in engine.step():
            tokens, text, _ = out[o.request_id]
            out[o.request_id] = (tokens + o.token_ids, text + o.text, o.finish_reason)
            assert len(engine.running) <= engine.max_batch
        step += 1
    return [out[rid] for rid in order]


def alone(model, prompt, params, tokenizer=None):
    return run(Engine(model, tokenizer, max_batch=1), {0: [(prompt, params)]})[0]


@pytest.mark.parametrize("lmf_fixture", ["lmf_gpt2_dir", "lmf_llama_dir"])
def test_requests_joining_at_different_steps_decode_as_if_alone(lmf_fixture, request):
    model, _ = load_model(request.getfixturevalue(lmf_fixture))
    greedy = [SamplingParams(max_tokens=n, temperature=0) for n in (12, 5, 9, 7, 10)]
    arrivals = {0: [(PROMPTS[0], greedy[0])], 2: [(PROMPTS[1], greedy[1]), (PROMPTS[2], greedy[2])]}
    arrivals[6] = [(PROMPTS[3], greedy[3]), (PROMPTS[4], greedy[4])]  # joins rows of other lengths
    served = run(Engine(model, max_batch=4), arrivals)
    expected = [uncached_greedy(model, p, g.max_tokens) for p, g in zip(PROMPTS, greedy)]
    assert [tokens for tokens, _, _ in served] == expected
    assert [alone(model, p, g)[0] for p, g in zip(PROMPTS, greedy)] == expected
    cfg = GenerationConfig(max_new_tokens=12, temperature=0, stop_at_eos=False)
    assert generate_ids(model, PROMPTS[:1], cfg, mode="static") == expected[:1]  # the fixed-shape path
    assert all(reason == "length" for _, _, reason in served)


def test_each_row_samples_with_its_own_params_and_seed(lmf_llama_dir):
    model, _ = load_model(lmf_llama_dir)
    mixed = [
        SamplingParams(max_tokens=10, temperature=0),
        SamplingParams(max_tokens=12, temperature=0.8, top_k=20, top_p=0.9, seed=3),
        SamplingParams(max_tokens=8, temperature=1.2, seed=4, presence_penalty=0.5, frequency_penalty=0.3),
        SamplingParams(max_tokens=9, temperature=0.7, top_p=0.8, seed=5, repetition_penalty=1.3),
    ]
    arrivals = {0: [(PROMPTS[0], mixed[0]), (PROMPTS[1], mixed[1])], 3: [(PROMPTS[2], mixed[2])]}
    arrivals[4] = [(PROMPTS[3], mixed[3])]
    together = [tokens for tokens, _, _ in run(Engine(model, max_batch=4), arrivals)]
    assert together == [alone(model, p, s)[0] for p, s in zip(PROMPTS, mixed)]
    reseeded = SamplingParams(max_tokens=12, temperature=0.8, top_k=20, top_p=0.9, seed=4)
    assert alone(model, PROMPTS[1], reseeded)[0] != together[1]


def uncached_penalized(model, prompt: list[int], n: int, rep: float, presence: float, freq: float) -> list:
    """Greedy under the penalties' definitions: repetition over prompt and output, the others over output."""
    seq, out = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([seq]))[0, -1].float()
            for t in set(seq):
                logits[t] = logits[t] * rep if logits[t] < 0 else logits[t] / rep
            for t in set(out):
                logits[t] -= presence + freq * out.count(t)
            out.append(int(logits.argmax()))
            seq.append(out[-1])
    return out


def test_penalised_rows_beside_others_follow_the_definitions(lmf_gpt2_dir):
    model, _ = load_model(lmf_gpt2_dir)
    plain = SamplingParams(max_tokens=4, temperature=0)
    pen = SamplingParams(max_tokens=16, temperature=0, repetition_penalty=1.5, presence_penalty=0.3)
    pen2 = SamplingParams(max_tokens=12, temperature=0, repetition_penalty=0.8, frequency_penalty=0.5)
    # plain ends first, and pen moves into its slot
    arrivals = {0: [(PROMPTS[1], plain), (PROMPTS[0], pen)], 2: [(PROMPTS[2], pen2)]}
    served = [t for t, _, _ in run(Engine(model, max_batch=3), arrivals)]
    assert served[1] == uncached_penalized(model, PROMPTS[0], 16, 1.5, 0.3, 0.0)
    assert served[2] == uncached_penalized(model, PROMPTS[2], 12, 0.8, 0.0, 0.5)
    assert served[1] != uncached_greedy(model, PROMPTS[0], 16)  # the penalties changed something


def test_abort_frees_the_slot_for_a_waiting_request(lmf_gpt2_dir):
    model, _ = load_model(lmf_gpt2_dir)
    engine = Engine(model, max_batch=2)
    params = SamplingParams(max_tokens=10, temperature=0)
    a, b = engine.add_request(PROMPTS[0], params), engine.add_request(PROMPTS[1], params)
    c = engine.add_request(PROMPTS[2], params)
    engine.step()
    engine.step()
    assert [r.id for r in engine.running] == [a, b] and [r.id for r in engine.waiting] == [c]
    assert engine.abort(a) and not engine.abort(a)
    assert [r.id for r in engine.running] == [b] and engine.running[0].slot == 0  # b moved into a's slot
    tokens = {b: [], c: []}
    while engine.has_work():
        for o in engine.step():
            tokens[o.request_id] += o.token_ids
            assert o.request_id != a
    assert tokens[c] == alone(model, PROMPTS[2], params)[0]
    assert tokens[b] == alone(model, PROMPTS[1], params)[0][2:]  # its first two came before the abort
    assert not engine.running and not engine.waiting


def test_requests_beyond_max_batch_wait_their_turn(lmf_gpt2_dir):
    model, _ = load_model(lmf_gpt2_dir)
    params = [SamplingParams(max_tokens=n, temperature=0) for n in (3, 6, 4, 5, 2)]
    engine = Engine(model, max_batch=2)
    served = run(engine, {0: list(zip(PROMPTS, params))})
    assert [t for t, _, _ in served] == [alone(model, p, s)[0] for p, s in zip(PROMPTS, params)]
    assert not engine.has_work()


def test_stop_strings_stop_ids_and_eos(lmf_gpt2_dir):
    model, tok = load_model(lmf_gpt2_dir)
    prompt = tok.encode("The function")
    free_ids, free_text, reason = alone(model, prompt, SamplingParams(max_tokens=30, temperature=0), tok)
    assert reason == "length" and free_text == tok.decode(prompt + free_ids)[len(tok.decode(prompt)) :]
    stop = free_text[5:8]
    ids, text, reason = alone(model, prompt, SamplingParams(max_tokens=30, temperature=0, stop=[stop]), tok)
    assert reason == "stop" and text == free_text[: free_text.find(stop)]
    stop_id = free_ids[4]
    params = SamplingParams(max_tokens=30, temperature=0, stop_token_ids=[stop_id])
    ids, text, reason = alone(model, prompt, params)
    assert reason == "stop" and ids == free_ids[: free_ids.index(stop_id)]
    model.lm_head.register_forward_hook(lambda m, i, out: out.index_fill(-1, torch.tensor([tok.eos_id]), 1e4))
    assert alone(model, prompt, SamplingParams(max_tokens=5, temperature=0), tok) == ([], "", "stop")
    ignoring = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
    assert alone(model, prompt, ignoring, tok)[0] == [tok.eos_id] * 3


def test_fp32_packs_only_forwards_of_four_rows_or_more(lmf_gpt2_dir, monkeypatch):
    """A packed fp32 copy is slower below 4 rows (batch 1: 24 vs 28 tokens/s on a 2-core Xeon), so an
    engine with 8 slots runs a lone request on the plain model and a full batch on the packed copy."""
    from lmforge.infer.cpu import PackedLinear, packing_rows

    model, _ = load_model(lmf_gpt2_dir)
    if packing_rows(model.float()) != 4:
        pytest.skip("oneDNN packing unavailable on this CPU")
    calls = []
    forward = PackedLinear.forward
    monkeypatch.setattr(PackedLinear, "forward", lambda self, x: calls.append(x.shape) or forward(self, x))
    greedy = SamplingParams(max_tokens=4, temperature=0)
    alone = run(Engine(model, max_batch=8), {0: [([11, 12], greedy)]})
    assert calls == []  # a 2-token prefill, then 1-row steps
    batch = run(Engine(model, max_batch=8), {0: [([11, 12], greedy)] * 8})
    assert calls and all(shape[0] * shape[1] >= 4 for shape in calls)
    assert batch[0] == alone[0]


def test_a_request_beyond_the_context_is_refused_when_added(lmf_gpt2_dir):
    model, _ = load_model(lmf_gpt2_dir)  # context 128
    engine = Engine(model, max_batch=2, max_len=64)
    with pytest.raises(LmforgeError, match="exceeds the context of 64 tokens"):
        engine.add_request(list(range(1, 60)), SamplingParams(max_tokens=10))
    with pytest.raises(LmforgeError, match="empty prompt"):
        engine.add_request([], SamplingParams())
    with pytest.raises(LmforgeError, match="need an engine with a tokenizer"):
        engine.add_request([1], SamplingParams(stop=["x"]))
    assert not engine.has_work()
    assert Engine(model, max_len=1000).max_len == 128


def test_logprobs_are_the_models(lmf_gpt2_dir):
    model, _ = load_model(lmf_gpt2_dir)
    engine = Engine(model)
    engine.add_request(PROMPTS[0], SamplingParams(max_tokens=1, temperature=0, logprobs=3))
    (out,) = engine.step()
    with torch.no_grad():
        want = model(torch.tensor([PROMPTS[0]]))[0, -1].log_softmax(-1)
    (lp,) = out.logprobs
    assert lp.token_id == out.token_ids[0] == int(want.argmax())
    assert lp.logprob == pytest.approx(float(want.max()), abs=1e-5)
    assert [t for t, _ in lp.top] == want.topk(3).indices.tolist()


def test_penalties_follow_their_definitions():
    logits = torch.tensor([[2.0, 1.9, 0.0], [2.0, 1.9, 0.0], [-1.0, -1.5, -3.0]])
    counts = torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 0]])
    seen = torch.tensor([[False] * 3, [False] * 3, [True, False, False]])
    params = [
        SamplingParams(temperature=0, presence_penalty=0.2),  # 2.0 - 0.2 < 1.9
        SamplingParams(temperature=0, frequency_penalty=0.04),  # 2.0 - 2 * 0.04 = 1.92 > 1.9
        SamplingParams(temperature=0, repetition_penalty=2.0),  # -1.0 * 2 < -1.5
    ]
    assert sample_rows(logits, params, [None] * 3, seen, counts).tolist() == [1, 0, 1]


TEXTS = ["héllo wörld 😀👍🏽 日本語のテキスト, naïve café — ∑ ≠ ∞", "🎉" * 5 + " 中文 " + "ü" * 3]


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_detokenizer_never_splits_a_character(bpe_tokenizer, text):
    tok = bpe_tokenizer
    ids = tok.encode(text)
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # some tokens end inside a character
    for context in ([], tok.encode("Say: ")):
        detok = IncrementalDetokenizer(tok, context)
        deltas = [detok.add(i) for i in ids] + [detok.flush()]
        assert "".join(deltas) == tok.decode(ids) == text
        assert not any("\ufffd" in d for d in deltas)
        assert len(detok.ids) <= 8  # only a short window is kept and decoded


def test_incremental_detokenizer_on_random_bytes_matches_the_full_decode(bpe_tokenizer):
    tok = bpe_tokenizer
    ids = torch.randint(4, tok.vocab_size, (400,), generator=torch.Generator().manual_seed(0)).tolist()
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.add(i) for i in ids] + [detok.flush()]
    assert "".join(deltas) == tok.decode(ids)
    whole = tok.decode(ids)
    assert all("\ufffd" not in d for d in deltas) or "\ufffd" in whole


def test_stop_strings_are_held_back_until_decided(bpe_tokenizer):
    tok = bpe_tokenizer
    ids = tok.encode("one two three four")
    tracker = TextTracker(tok, ["thr", "fox"])
    out = "".join(tracker.add(i) for i in ids)
    assert tracker.stopped and out == "one two "
    tracker = TextTracker(tok, ["four five"])
    out = "".join(tracker.add(i) for i in ids)
    assert not tracker.stopped and out == "one two three "  # "four" may begin the stop string
    assert out + tracker.flush() == "one two three four"
