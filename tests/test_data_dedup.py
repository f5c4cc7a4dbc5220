"""Dedup: MinHash statistics, vectorised shingling, union-find, exact and exact-substring dedup, and
near-duplicates injected into real pages."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from lmforge.data.dedup.hashing import band_keys, batch_ngram_hashes, ngram_hashes, permutations, signatures
from lmforge.data.dedup.substring import adjacent_lcp, repeated_mask, suffix_array
from lmforge.data.dedup.unionfind import components
from lmforge.data.text import normalize_for_dedup


def test_normalisation_for_dedup():
    assert normalize_for_dedup("  Héllo,  WORLD!\n It's 2024-05-01 ") == "hello world it s 0 0 0"


def test_ngram_hashes_match_whole_ngrams():
    text = "the quick brown fox jumps over the lazy dog the quick brown fox jumps over"
    h = ngram_hashes(text, 5)
    assert h.size == len(text.split()) - 4
    assert h[0] == h[9] and h[1] == h[10]  # the same 5-gram at two places
    assert len(set(h.tolist())) == 9
    assert ngram_hashes("only four words here", 5).size == 0
    # the hash depends on the words, not where they sit in the text
    assert ngram_hashes("x y " + "a b c d e", 5)[-1] == ngram_hashes("a b c d e", 5)[0]


def sigs(docs: list[np.ndarray], a: np.ndarray, **kw) -> np.ndarray:
    return signatures(np.concatenate(docs), np.array([d.size for d in docs]), a, **kw)


def test_batch_hashing_equals_one_text_at_a_time():
    texts = ["a b c d e f", "", "one two", "the same five words here x", "a b c d e", "z " * 40 + "end"]
    texts = [t.strip() for t in texts]
    hashes, counts = batch_ngram_hashes(texts, 5)
    assert counts.tolist() == [2, 0, 0, 2, 1, 37]
    assert np.array_equal(hashes, np.concatenate([ngram_hashes(t, 5) for t in texts]))
    assert hashes[0] == hashes[4]  # "a b c d e" in two texts


def pair_with_jaccard(rng: np.random.Generator, s: float, union: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Two shingle sets whose Jaccard similarity is exactly round(s * union) / union."""
    shared = round(s * union)
    only = (union - shared) // 2
    u = rng.integers(0, 2**32, size=shared + 2 * only, dtype=np.uint32)
    return u[: shared + only], np.concatenate([u[:shared], u[shared + only :]])


@pytest.mark.parametrize("s", [0.5, 0.7, 0.8, 0.9])
def test_minhash_collision_probability_follows_lsh_curve(s):
    """P(candidate pair) = 1 - (1 - s^r)^b for FineWeb's 14 x 8, and each single hash collides with P = s."""
    rng = np.random.default_rng(int(s * 100))
    bands, rows, n_pairs = 14, 8, 600
    a = permutations(bands * rows, seed=7)
    sets = [pair_with_jaccard(rng, s) for _ in range(n_pairs)]
    shared = round(s * 200)
    s_exact = shared / (shared + 2 * ((200 - shared) // 2))
    flat = [x for pair in sets for x in pair]
    sig = sigs(flat, a)
    per_hash = (sig[0::2] == sig[1::2]).mean()
    assert abs(per_hash - s_exact) < 0.01  # 67,200 hash comparisons: std ~0.002
    keys = band_keys(sig, bands, rows)
    collide = (keys[0::2] == keys[1::2]).any(axis=1).mean()
    expected = 1 - (1 - s_exact**rows) ** bands
    std = np.sqrt(expected * (1 - expected) / n_pairs)
    assert abs(collide - expected) < max(4 * std, 0.01), (collide, expected)


def test_refinedweb_bands_separate_075_from_080():
    """RefinedWeb's 450 x 20: P(0.75) = 76 %, P(0.8) = 99.4 % (spec §10)."""
    rng = np.random.default_rng(0)
    a = permutations(9000, seed=1)
    rates = {}
    for s in (0.6, 0.8):
        sets = [x for _ in range(100) for x in pair_with_jaccard(rng, s)]
        keys = band_keys(sigs(sets, a), 450, 20)
        rates[s] = (keys[0::2] == keys[1::2]).any(axis=1).mean()
    assert rates[0.6] < 0.1  # expected 1 - (1 - 0.6^20)^450 = 0.016
    assert rates[0.8] > 0.97  # expected 0.994


def test_signatures_are_deterministic_and_blockwise_equal():
    rng = np.random.default_rng(1)
    docs = [rng.integers(0, 2**32, size=n, dtype=np.uint32) for n in (50, 0, 300, 1)]
    a = permutations(112, seed=3)
    whole = sigs(docs, a)
    small_blocks = sigs(docs, a, chunk=64)
    assert np.array_equal(whole, small_blocks)
    assert (whole[1] == np.iinfo(np.uint32).max).all()  # no shingles: no signature
    assert np.array_equal(whole, sigs(docs, permutations(112, seed=3)))
    assert not np.array_equal(whole, sigs(docs, permutations(112, seed=4)))


def test_union_find_matches_reference():
    rng = random.Random(0)
    n = 300
    edges = [(rng.randrange(n), rng.randrange(n)) for _ in range(200)]
    root = components(np.array([e[0] for e in edges]), np.array([e[1] for e in edges]), n)
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for u, v in edges:
        ru, rv = find(u), find(v)
        if ru != rv:
            parent[max(ru, rv)] = min(ru, rv)
    assert [find(x) for x in range(n)] == root.tolist()


def test_suffix_array_and_lcp_match_naive():
    rng = np.random.default_rng(0)
    seq = rng.integers(0, 3, size=200)
    sa, levels = suffix_array(seq)
    naive = sorted(range(seq.size), key=lambda i: seq[i:].tolist())
    assert sa.tolist() == naive
    lcp = adjacent_lcp(sa, levels)
    for k in range(seq.size - 1):
        x, y = seq[sa[k] :].tolist(), seq[sa[k + 1] :].tolist()
        m = 0
        while m < min(len(x), len(y)) and x[m] == y[m]:
            m += 1
        assert lcp[k] == m


def test_repeated_mask_threshold():
    seq = np.array([9, 1, 2, 3, 4, 8, 1, 2, 3, 4, 7, 1, 2, 5])
    assert repeated_mask(seq, 4).tolist() == [0, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0, 0]
    assert not repeated_mask(seq, 5).any()


# ---------------------------------------------------------------- through the pipeline


def write_jsonl(path, docs):
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")


def read_jsonl(folder):
    out = []
    for p in sorted(folder.glob("*.jsonl")):
        out += [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]
    return out


def run(tmp_path, stages, inputs, name="out", **extra):
    from lmforge.data.config import PipelineConfig
    from lmforge.data.run import run_pipeline

    cfg = PipelineConfig(
        input=[str(p) for p in inputs],
        output=str(tmp_path / name),
        output_format="jsonl",
        stages=stages,
        progress=False,
        **extra,
    )
    return run_pipeline(cfg), read_jsonl(tmp_path / name)


@pytest.fixture(scope="module")
def articles(shared_data):
    """Real article bodies (the extraction benchmark's gold text), long enough to shingle."""
    gt = json.loads((shared_data / "web/article-extraction-benchmark/ground-truth.json").read_text())
    docs = [{"id": k, "text": v["articleBody"], "url": v["url"]} for k, v in sorted(gt.items())]
    return [d for d in docs if len(d["text"].split()) >= 150][:80]


def near_copy(text: str, rng: random.Random) -> str:
    """A light edit: 1 word in 60 replaced, a boilerplate line appended (5-gram Jaccard ~0.85-0.95)."""
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, len(words) // 60)):
        words[i] = "EDITED"
    return " ".join(words) + "\nShare this article with your friends."


@pytest.mark.parametrize(("bands", "rows"), [(14, 8), (450, 20)])
def test_injected_near_duplicates_are_removed_across_shards(tmp_path, articles, bands, rows):
    rng = random.Random(5)
    half = len(articles) // 2
    copies = [{"id": f"copy-{d['id']}", "text": near_copy(d["text"], rng)} for d in articles[:10]]
    write_jsonl(tmp_path / "a.jsonl", articles[:half])
    write_jsonl(tmp_path / "b.jsonl", articles[half:] + copies)  # the copies sit in another shard
    report, out = run(
        tmp_path,
        [{"minhash": {"bands": bands, "rows": rows, "ranges_per_band": 2}}],
        [tmp_path / "a.jsonl", tmp_path / "b.jsonl"],
    )
    kept = {d["id"] for d in out}
    assert len(out) == len(articles)  # exactly one of each of the 10 pairs went
    for d in articles[:10]:
        assert (d["id"] in kept) != (f"copy-{d['id']}" in kept)
    assert {d["id"] for d in articles[10:]} <= kept  # distinct pages all stay
    assert report["dedup"]["minhash"]["clusters"] == 10
    assert report["stages"][1]["removed"] == {"near_duplicate": 10}


def test_minhash_survivor_depends_on_seed_only(tmp_path, articles):
    rng = random.Random(1)
    docs = articles[:20] + [
        {"id": f"copy-{d['id']}", "text": near_copy(d["text"], rng)} for d in articles[:20]
    ]
    write_jsonl(tmp_path / "all.jsonl", docs)
    kept = {}
    for seed in (1, 1, 2):
        _, out = run(
            tmp_path,
            [{"minhash": {"seed": seed, "bands": 30, "rows": 4}}],
            [tmp_path / "all.jsonl"],
            name=f"s{seed}-{len(kept)}",
        )
        kept.setdefault(seed, []).append(sorted(d["id"] for d in out))
    assert kept[1][0] == kept[1][1]
    assert kept[1][0] != kept[2][0]  # another seed picks other survivors (20 coin flips)
    assert len(kept[2][0]) == 20


def test_exact_dedup_keeps_first_copy(tmp_path):
    write_jsonl(tmp_path / "1.jsonl", [{"id": "a", "text": "same"}, {"id": "b", "text": "other"}])
    write_jsonl(
        tmp_path / "2.jsonl",
        [{"id": "c", "text": "same"}, {"id": "d", "text": "other"}, {"id": "e", "text": "new"}],
    )
    report, out = run(tmp_path, ["exact_dedup"], [tmp_path / "1.jsonl", tmp_path / "2.jsonl"])
    assert [d["id"] for d in out] == ["a", "b", "e"]
    assert report["stages"][1]["removed"] == {"duplicate": 2}


def test_url_dedup(tmp_path):
    write_jsonl(
        tmp_path / "1.jsonl",
        [
            {"id": "a", "text": "x", "url": "http://A.com/p"},
            {"id": "b", "text": "y", "url": "http://a.com/p"},
        ],
    )
    _, out = run(tmp_path, [{"exact_dedup": {"field": "url"}}], [tmp_path / "1.jsonl"])
    assert [d["id"] for d in out] == ["a"]


def test_exact_substring_cuts_every_copy_of_long_spans(tmp_path, articles):
    shared = " ".join(articles[0]["text"].split()[:60])  # 60 words in common
    short = " ".join(articles[1]["text"].split()[:40])  # 40 words in common: below the 50-token bar
    docs = [
        {"id": "p", "text": "Alpha intro sentence here. " + shared + " Closing words of the first page."},
        {"id": "q", "text": "Beta opening line. " + shared + " " + short + " and an ending of the second."},
        {"id": "r", "text": shared},  # nothing else: dropped after the cut
        {"id": "s", "text": "Gamma: " + short + " unique tail text for this document."},
    ]
    write_jsonl(tmp_path / "d.jsonl", docs)
    report, out = run(tmp_path, ["exact_substring"], [tmp_path / "d.jsonl"])
    by_id = {d["id"]: d["text"] for d in out}
    assert set(by_id) == {"p", "q", "s"}
    assert by_id["p"].startswith("Alpha intro sentence here.") and by_id["p"].endswith(
        "Closing words of the first page."
    )
    assert len(by_id["p"]) < 70
    assert shared not in by_id["q"] and short in by_id["q"]
    assert by_id["s"] == docs[3]["text"]
    assert report["stages"][1]["removed"] == {"too_short_after_cut": 1}
