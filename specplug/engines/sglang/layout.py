"""DraftTree -> SGLang's NGRAM verify layout (engine-free numpy; no sglang import).

SGLang's NGRAM worker verifies, per request, exactly ``width`` nodes given as
``tokens[width]`` and a row-major ``mask[width, width]``:
- node 0 is the last committed token (the DraftTree's root, not yet in the KV cache);
- every other node's parent has a smaller index;
- ``mask[i, j] = 1`` iff j is an ancestor of i or i itself;
- unused nodes are padding: token 0, a child of node 0.
SGLang derives positions and tree links from the mask alone (`reconstruct_indices_from_tree_mask`:
parent = the largest ancestor index, first child, next sibling), so a DraftTree in topological
order maps onto it by shifting every node by one. Padding is exact: verification accepts a padding
node only where the target itself predicts token 0, which is then the correct token.
"""

from __future__ import annotations

import numpy as np

from specplug.tree import DraftTree

PAD_TOKEN_ID = 0  # what SGLang's own NGRAM padding uses


def layout_request(root_token: int, tree: DraftTree, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One request's ``(tokens int64[width], mask int64[width, width])``.

    ``tree`` must have at most ``width - 1`` nodes (ask the proposer for that budget)."""
    n = tree.num_nodes
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    if n > width - 1:
        raise ValueError(f"a tree of {n} nodes does not fit in width {width} (node 0 is the root)")
    tokens = np.full(width, PAD_TOKEN_ID, dtype=np.int64)
    tokens[0] = root_token
    tokens[1 : n + 1] = tree.tokens
    # ancestor_mask()[i, j]: node j is an ancestor of node i or i itself (tree indices)
    mask = np.zeros((width, width), dtype=np.int64)
    mask[:, 0] = 1  # the root is everyone's ancestor
    mask[1 : n + 1, 1 : n + 1] = tree.ancestor_mask()
    idx = np.arange(n + 1, width)
    mask[idx, idx] = 1  # padding nodes: children of the root
    return tokens, mask


def layout_batch(roots, trees, width: int) -> tuple[np.ndarray, np.ndarray]:
    """What NGRAMWorker._prepare_draft_tokens returns: ``tokens int64[bs*width]`` and the flat
    ``mask int64[bs*width*width]``."""
    if len(roots) != len(trees):
        raise ValueError(f"{len(roots)} roots for {len(trees)} trees")
    bs = len(trees)
    tokens = np.empty((bs, width), dtype=np.int64)
    mask = np.empty((bs, width, width), dtype=np.int64)
    for b, (root, tree) in enumerate(zip(roots, trees)):
        tokens[b], mask[b] = layout_request(int(root), tree, width)
    return tokens.reshape(-1), mask.reshape(-1)

