"""Connected components of a duplicate-pair graph: union-find done in vectorised rounds.

Each round every edge hooks the larger of its two roots onto the smaller one (``np.minimum.at``), then
pointer jumping compresses every path to its root. Parents only ever decrease, so there are no cycles, and
the number of rounds is small (logarithmic in practice). Replaces datatrove's one-pair-at-a-time loop.
"""

from __future__ import annotations

import numpy as np


def components(u: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
    """Root (the smallest node id) of every node 0..n-1, given undirected edges ``u[i] - v[i]``."""
    parent = np.arange(n, dtype=np.int64)
    u = np.asarray(u, dtype=np.int64)
    v = np.asarray(v, dtype=np.int64)
    while True:
        pu, pv = parent[u], parent[v]
        diff = pu != pv
        if not diff.any():
            return parent
        np.minimum.at(parent, np.maximum(pu, pv)[diff], np.minimum(pu, pv)[diff])
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
