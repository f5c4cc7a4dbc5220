"""Vectorised hashing for MinHash: word n-gram shingles and signatures, with no per-shingle Python loop.

Shingles are hashed straight from the UTF-8 bytes of the normalised text with a polynomial prefix hash
(mod 2**32, numpy's wrapping arithmetic), so an n-gram's hash is two lookups and a multiply; MurmurHash3's
finaliser then spreads the bits. 32 bits are plenty: only shingles of the same pair of documents are ever
compared, and datasketch's signatures are 32-bit too. MinHash permutations are ``a*x mod 2**32`` with odd
``a``: a bijection of the 32-bit space, so each signature value is the minimum of a true permutation of the
(already well mixed) shingle hashes. An added ``+ b`` costs a third more time and changed none of the
checked statistics (tests: per-hash collision rate = Jaccard within 0.01; band collisions on the
1 - (1 - s^r)^b curve).
"""

from __future__ import annotations

import numpy as np

U64 = np.uint64
U32 = np.uint32
_P = 0x01000193  # 32-bit FNV prime: odd, so it has an inverse mod 2**32
_P_INV = pow(_P, -1, 2**32)
_powers = np.ones(1, dtype=U32)
_inv_powers = np.ones(1, dtype=U32)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, element-wise (a bijection on uint64 with good avalanche)."""
    x = x ^ (x >> U64(30))
    x = x * U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> U64(27))
    x = x * U64(0x94D049BB133111EB)
    return x ^ (x >> U64(31))


def fmix32(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser, element-wise (a bijection on uint32)."""
    x = x ^ (x >> U32(16))
    x = x * U32(0x85EBCA6B)
    x = x ^ (x >> U32(13))
    x = x * U32(0xC2B2AE35)
    return x ^ (x >> U32(16))


def _ensure_powers(n: int) -> None:
    """Grow the cached tables of P**j and P**-j (mod 2**32) to at least ``n`` entries."""
    global _powers, _inv_powers
    if _powers.size >= n:
        return
    size = max(n, 2 * _powers.size, 4096)
    _powers = np.concatenate(([U32(1)], np.cumprod(np.full(size - 1, _P, dtype=U32), dtype=U32)))
    _inv_powers = np.concatenate(([U32(1)], np.cumprod(np.full(size - 1, _P_INV, dtype=U32), dtype=U32)))


def ngram_hashes(norm: str, n: int) -> np.ndarray:
    """Hashes of every run of ``n`` consecutive words of one normalised text (see ``batch_ngram_hashes``)."""
    return batch_ngram_hashes([norm], n)[0]


def batch_ngram_hashes(norms: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every run of ``n`` consecutive words of each text, all texts in one vectorised pass.

    The texts (normalised: words separated by single spaces, no newline) are joined with newlines; word
    boundaries are spaces and newlines, and an n-gram whose first and last word lie in different texts is
    left out. Returns the hashes in text order and the number per text. A text with fewer than ``n`` words
    has none: such a document is never a duplicate.
    """
    b = np.frombuffer("\n".join(norms).encode("utf-8"), dtype=np.uint8)
    cuts = np.flatnonzero(b <= 32)  # spaces and the newlines between texts (normalised text has no others)
    starts = np.concatenate(([0], cuts + 1))
    ends = np.concatenate((cuts, [b.size]))
    text_of_word = np.searchsorted(np.flatnonzero(b == 10), starts)
    first, last = starts[: starts.size - n + 1], ends[n - 1 :]
    keep = text_of_word[: starts.size - n + 1] == text_of_word[n - 1 :]
    first, last = first[keep], last[keep]
    _ensure_powers(b.size + 1)
    prefix = np.zeros(b.size + 1, dtype=U32)
    np.cumsum(np.multiply(_powers[: b.size], b, dtype=U32), dtype=U32, out=prefix[1:])
    hashes = fmix32((prefix[last] - prefix[first]) * _inv_powers[first])
    counts = np.bincount(text_of_word[: starts.size - n + 1][keep], minlength=len(norms))
    return hashes, counts


def permutations(num_perm: int, seed: int) -> np.ndarray:
    """Odd multipliers ``a`` of ``num_perm`` permutations ``x -> a*x mod 2**32``, fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2**32, size=num_perm, dtype=np.uint32) | np.uint32(1)


def signatures(
    hashes: np.ndarray, counts: np.ndarray, a: np.ndarray, chunk: int = 1 << 13, max_rows: int = 32
) -> np.ndarray:
    """MinHash signatures (len(counts) x num_perm, uint32) of documents whose shingle hashes are laid end
    to end in ``hashes`` (``counts[i]`` of them for document i).

    Each 32-bit shingle hash goes through every permutation ``a*x mod 2**32`` as broadcast multiplies
    over up to ``max_rows`` permutations at a time, and a segmented minimum along the contiguous axis
    (``np.minimum.reduceat``) gives each document's minimum. Documents are taken about ``chunk`` shingles
    at a time, into one reused buffer, so the temporary matrix stays in cache; 32-bit values (as
    datasketch uses) keep the
    arithmetic SIMD-native. A document with no shingle gets the all-ones signature, which callers must leave
    out.
    """
    counts = np.asarray(counts, dtype=np.int64)
    out = np.full((a.size, counts.size), np.iinfo(np.uint32).max, dtype=np.uint32)
    x = np.asarray(hashes, dtype=U32)
    ends = np.cumsum(counts)
    buf = np.empty(chunk * max_rows, dtype=U32)
    doc0 = 0
    while doc0 < counts.size:
        base = ends[doc0] - counts[doc0]
        doc1 = max(doc0 + 1, int(np.searchsorted(ends, base + chunk, side="right")))
        has = doc0 + np.flatnonzero(counts[doc0:doc1])
        if has.size:
            seg = x[base : ends[doc1 - 1]]
            offsets = ends[has] - counts[has] - base
            rows = int(np.clip(chunk * max_rows // max(seg.size, 1), 1, max_rows))
            if buf.size < rows * seg.size:  # one document longer than the chunk
                buf = np.empty(rows * seg.size, dtype=U32)
            for r0 in range(0, a.size, rows):
                a_rows = a[r0 : r0 + rows, None]
                phv = buf[: a_rows.size * seg.size].reshape(a_rows.size, seg.size)
                np.multiply(a_rows, seg[None, :], out=phv)
                out[r0 : r0 + rows, has] = np.minimum.reduceat(phv, offsets, axis=1)
        doc0 = doc1
    return np.ascontiguousarray(out.T)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per (document, band): equal keys iff (up to 2**-64) the band's rows all match."""
    s = sig[:, : bands * rows].reshape(sig.shape[0], bands, rows).astype(U64)
    key = np.zeros(s.shape[:2], dtype=U64)
    for r in range(rows):
        key = mix64(key * U64(_P) + s[:, :, r])
    return key
