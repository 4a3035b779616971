"""Random trees for property tests (hypothesis strategies and a seeded numpy builder)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from specplug.tree import DraftTree


def random_tree(rng: np.random.Generator, n: int, vocab: int, with_scores: bool = False) -> DraftTree:
    """A random valid tree: parents[i] uniform in [-1, i-1], sibling tokens distinct."""
    parents = np.full(n, -1, np.int64)
    tokens = np.zeros(n, np.int64)
    used: dict[int, set[int]] = {}
    for i in range(n):
        for _ in range(100):
            p = int(rng.integers(-1, i)) if i > 0 else -1
            free = [t for t in range(vocab) if t not in used.get(p, set())]
            if free:
                break
        else:  # every candidate parent is full: fall back to a fresh chain below the last node
            p, free = i - 1, list(range(vocab))
        tok = int(rng.choice(free))
        used.setdefault(p, set()).add(tok)
        parents[i], tokens[i] = p, tok
    scores = rng.random(n).astype(np.float32) if with_scores else None
    return DraftTree(tokens, parents, scores=scores)


@st.composite
def trees(draw, max_nodes: int = 24, vocab: int = 6, with_scores: bool = False):
    n = draw(st.integers(0, max_nodes))
    seed = draw(st.integers(0, 2**32 - 1))
    return random_tree(np.random.default_rng(seed), n, vocab, with_scores)
