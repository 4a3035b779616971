"""Slow, obviously-correct numpy versions of what SGLang does with an NGRAM layout, written from
the semantics documented in sglang 0.5.23 (`sglang/kernels/ops/speculative/reconstruct_tree.py`
module docstring, and the greedy tree walk of `verify_tree_greedy`)."""

from __future__ import annotations

import numpy as np


def reconstruct_links(mask: np.ndarray, seq_len: int, width: int):
    """One request: (positions, parent, retrieve_next_token, retrieve_next_sibling).

    ancestors[i, j] = mask[i, j] and j < i; positions = #ancestors + seq_len;
    parent = max ancestor else -1; next_token = min{k > i: i ancestor of k}... restricted, as in
    SGLang, to the first k whose ancestor set contains i; next_sibling = min{k > i: parent[k] ==
    parent[i]} (and -1 for a node without parent)."""
    m = np.asarray(mask).reshape(width, width).astype(bool)
    positions = np.zeros(width, np.int64)
    parent = np.full(width, -1, np.int64)
    nxt = np.full(width, -1, np.int64)
    sib = np.full(width, -1, np.int64)
    for i in range(width):
        anc = [j for j in range(i) if m[i, j]]
        positions[i] = len(anc) + seq_len
        parent[i] = max(anc) if anc else -1
    for i in range(width):
        kids = [k for k in range(i + 1, width) if m[k, i]]
        nxt[i] = kids[0] if kids else -1
        if parent[i] >= 0:
            sibs = [k for k in range(i + 1, width) if parent[k] == parent[i]]
            sib[i] = sibs[0] if sibs else -1
    return positions, parent, nxt, sib


def greedy_walk(tokens: np.ndarray, next_token: np.ndarray, next_sibling: np.ndarray, argmax_at) -> list[int]:
    """SGLang's greedy tree acceptance for one request: from node 0, take the target's argmax at
    the current node; move to the first child (next_token, then next_sibling links) holding it,
    else stop. Returns the accepted tokens followed by the bonus token.

    ``argmax_at(node)`` is the target's argmax after the path to ``node``."""
    cur, out = 0, []
    while True:
        y = int(argmax_at(cur))
        child = int(next_token[cur])
        while child != -1 and int(tokens[child]) != y:
            child = int(next_sibling[child])
        out.append(y)
        if child == -1:
            return out
        cur = child
