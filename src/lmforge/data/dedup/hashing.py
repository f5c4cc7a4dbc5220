"""Vectorised 64-bit hashing: word n-gram shingles and MinHash signatures, with no per-shingle Python loop.

Shingles are hashed straight from the UTF-8 bytes of the normalised text with a polynomial prefix hash
(mod 2**64, numpy's wrapping arithmetic), so an n-gram's hash is two lookups and a multiply; a splitmix64
finaliser then spreads the bits. MinHash permutations are ``a*x + b mod 2**32`` with odd ``a``: a bijection
of the 32-bit space, so each signature value is the minimum of a true permutation of the shingle hashes.
"""

from __future__ import annotations

import numpy as np

U64 = np.uint64
_P = 0x100000001B3  # FNV prime: odd, so it has an inverse mod 2**64
_P_INV = pow(_P, -1, 2**64)
_powers = np.ones(1, dtype=U64)
_inv_powers = np.ones(1, dtype=U64)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, element-wise (a bijection on uint64 with good avalanche)."""
    x = x ^ (x >> U64(30))
    x = x * U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> U64(27))
    x = x * U64(0x94D049BB133111EB)
    return x ^ (x >> U64(31))


def _ensure_powers(n: int) -> None:
    """Grow the cached tables of P**j and P**-j (mod 2**64) to at least ``n`` entries."""
    global _powers, _inv_powers
    if _powers.size >= n:
        return
    size = max(n, 2 * _powers.size, 4096)
    _powers = np.concatenate(([U64(1)], np.cumprod(np.full(size - 1, _P, dtype=U64))))
    _inv_powers = np.concatenate(([U64(1)], np.cumprod(np.full(size - 1, _P_INV, dtype=U64))))


def ngram_hashes(norm: str, n: int) -> np.ndarray:
    """Hashes of every run of ``n`` consecutive words of ``norm`` (single-space separated, as normalised).

    Fewer than ``n`` words gives an empty array: such a document has no shingle and is never a duplicate.
    """
    b = np.frombuffer(norm.encode("utf-8"), dtype=np.uint8)
    if b.size == 0:
        return np.empty(0, dtype=U64)
    spaces = np.flatnonzero(b == 32)
    if spaces.size + 1 < n:
        return np.empty(0, dtype=U64)
    _ensure_powers(b.size + 1)
    prefix = np.zeros(b.size + 1, dtype=U64)
    np.cumsum((b.astype(U64) + U64(1)) * _powers[: b.size], out=prefix[1:])
    starts = np.concatenate(([0], spaces + 1))[: spaces.size + 2 - n]
    ends = np.concatenate((spaces, [b.size]))[n - 1 :]
    return mix64((prefix[ends] - prefix[starts]) * _inv_powers[starts])


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``a`` (odd) and ``b`` coefficients of ``num_perm`` permutations of uint32, fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**32, size=num_perm, dtype=np.uint32) | np.uint32(1)
    b = rng.integers(0, 2**32, size=num_perm, dtype=np.uint32)
    return a, b


def signatures(shingles: list[np.ndarray], a: np.ndarray, b: np.ndarray, block: int = 1 << 21) -> np.ndarray:
    """MinHash signatures (len(shingles) x num_perm, uint32) of many documents at once.

    All documents' shingles (the top 32 bits of their hashes) are laid side by side, and each small block of
    permutations is one broadcast multiply-add over them plus a segmented minimum along the contiguous axis
    (``np.minimum.reduceat``); ``block`` bounds the temporary matrix (8 MiB). 32-bit values, as datasketch
    uses, make the arithmetic SIMD-native. A document with no shingle gets the all-ones signature, which
    callers must leave out.
    """
    out = np.full((a.size, len(shingles)), np.iinfo(np.uint32).max, dtype=np.uint32)
    sizes = np.array([s.size for s in shingles], dtype=np.int64)
    has = np.flatnonzero(sizes)
    if has.size == 0:
        return out.T
    flat = (np.concatenate([shingles[i] for i in has]) >> U64(32)).astype(np.uint32)
    offsets = np.concatenate(([0], np.cumsum(sizes[has])[:-1]))
    rows = int(np.clip(block // flat.size, 1, 8))
    for r0 in range(0, a.size, rows):
        phv = a[r0 : r0 + rows, None] * flat[None, :]
        phv += b[r0 : r0 + rows, None]
        out[r0 : r0 + rows, has] = np.minimum.reduceat(phv, offsets, axis=1)
    return np.ascontiguousarray(out.T)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per (document, band): equal keys iff (up to 2**-64) the band's rows all match."""
    s = sig[:, : bands * rows].reshape(sig.shape[0], bands, rows).astype(U64)
    key = np.zeros(s.shape[:2], dtype=U64)
    for r in range(rows):
        key = mix64(key * U64(_P) + s[:, :, r])
    return key
