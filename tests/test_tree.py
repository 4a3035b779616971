"""DraftTree operations against brute-force recomputation on random trees."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specplug.tree import PAD_TOKEN, DraftTree, TreeBatch
from tests.tree_strategies import random_tree, trees


def brute_ancestors(tree: DraftTree, i: int) -> list[int]:
    """i and every ancestor of i, by walking parent pointers."""
    out = [i]
    while tree.parents[out[-1]] >= 0:
        out.append(int(tree.parents[out[-1]]))
    return out


def token_paths(tree: DraftTree) -> set[tuple[int, ...]]:
    """Every root-to-node token path (prefix-closed set)."""
    return {tuple(int(tree.tokens[a]) for a in reversed(brute_ancestors(tree, i))) for i in range(tree.num_nodes)
            if tree.tokens[i] != PAD_TOKEN}


@given(trees())
@settings(max_examples=150, deadline=None)
def test_depths_masks_positions_match_brute_force(tree):
    n = tree.num_nodes
    for i in range(n):
        assert tree.depths()[i] == len(brute_ancestors(tree, i))
    anc = tree.ancestor_mask()
    for i in range(n):
        assert set(np.flatnonzero(anc[i])) == set(brute_ancestors(tree, i))
    prefix = 5
    mask = tree.attention_mask(prefix)
    assert mask.shape == (n + 1, prefix + n + 1)
    assert mask[:, : prefix + 1].all()  # prefix and root visible to all
    assert not mask[0, prefix + 1 :].any()  # root sees no draft node
    for i in range(n):
        assert set(np.flatnonzero(mask[i + 1, prefix + 1 :])) == set(brute_ancestors(tree, i))
    pos = tree.position_ids(prefix)
    assert pos[0] == prefix
    assert list(pos[1:]) == [prefix + len(brute_ancestors(tree, i)) for i in range(n)]


@given(trees())
@settings(max_examples=100, deadline=None)
def test_paths_cover_every_leaf_once(tree):
    paths = tree.paths()
    leaves = {i for i in range(tree.num_nodes) if i not in set(tree.parents.tolist())}
    assert sorted(p[-1] for p in paths) == sorted(leaves)
    for p in paths:
        assert tree.parents[p[0]] == -1
        for a, b in zip(p, p[1:]):
            assert tree.parents[b] == a


@given(trees(with_scores=True), st.integers(0, 30))
@settings(max_examples=150, deadline=None)
def test_prune_keeps_parents_and_respects_budget(tree, budget):
    pruned = tree.prune(budget)
    assert pruned.num_nodes == min(budget, tree.num_nodes)
    # every kept path is a path of the original tree (closed under parents by construction)
    assert token_paths(pruned) <= token_paths(tree)
    # best-first: no dropped node whose parent was kept has a higher score than a kept node
    # that was chosen after it could have been chosen. Check the weaker, exact invariant:
    # the kept set is what a brute-force best-first search returns.
    frontier = {int(c) for c in tree.children(-1)}
    kept = []
    while frontier and len(kept) < budget:
        best = max(frontier, key=lambda c: (tree.scores[c], -c))
        frontier.remove(best)
        kept.append(best)
        frontier |= {int(c) for c in tree.children(best)}
    assert token_paths(pruned) == token_paths(tree.subtree(kept))


def test_prune_without_scores_is_breadth_first():
    t = DraftTree.from_paths([[1, 2, 3], [4, 5], [6]])
    assert token_paths(t.prune(3)) == {(1,), (4,), (6,)}
    assert token_paths(t.prune(5)) == {(1,), (4,), (6,), (1, 2), (4, 5)}


@given(trees(vocab=4), trees(vocab=4))
@settings(max_examples=150, deadline=None)
def test_merge_is_union_of_paths(a, b):
    m = a.merge(b)
    assert token_paths(m) == token_paths(a) | token_paths(b)
    m.validate(distinct_siblings=True)


def test_merge_keeps_max_score():
    a = DraftTree.from_paths([[1, 2]], path_scores=[0.2])
    b = DraftTree.from_paths([[1, 3]], path_scores=[0.9])
    m = a.merge(b)
    assert m.num_nodes == 3
    assert m.scores[0] == pytest.approx(0.9)


@given(trees(with_scores=True))
@settings(max_examples=100, deadline=None)
def test_best_path_maximises_cumulative_score(tree):
    if tree.num_nodes == 0:
        assert tree.best_path() == []
        return
    best = tree.best_path()
    total = lambda path: sum(float(tree.scores[i]) for i in path)  # noqa: E731
    candidates = [tree.path_to(i) for i in range(tree.num_nodes)]
    assert total(best) == pytest.approx(max(total(p) for p in candidates))
    chain = tree.chain_of_best()
    assert list(chain.parents) == list(range(-1, chain.num_nodes - 1))
    assert tree.chain_tokens() == [int(tree.tokens[i]) for i in best]


@given(st.integers(0, 2**32 - 1), st.integers(1, 24))
@settings(max_examples=200, deadline=None)
def test_best_path_and_prune_break_ties_as_documented(seed, budget):
    """Scores from {0, 0.25, 0.5}: many ties. best_path: largest sum, then deeper, then lower index;
    prune: best-first by score, then lower index."""
    rng = np.random.default_rng(seed)
    t = random_tree(rng, int(rng.integers(1, 24)), 4)
    t = DraftTree(t.tokens, t.parents, scores=rng.choice([0.0, 0.25, 0.5], size=t.num_nodes))
    key = lambda i: (sum(float(t.scores[j]) for j in t.path_to(i)), len(t.path_to(i)), -i)  # noqa: E731
    assert t.best_path() == t.path_to(max(range(t.num_nodes), key=key))
    frontier, kept = {int(c) for c in t.children(-1)}, []
    while frontier and len(kept) < budget:
        best = max(frontier, key=lambda c: (t.scores[c], -c))
        frontier.remove(best)
        kept.append(best)
        frontier |= {int(c) for c in t.children(best)}
    pruned = t.prune(budget)
    want = t.subtree(kept)
    assert pruned.tokens.tolist() == want.tokens.tolist() and pruned.parents.tolist() == want.parents.tolist()


@given(st.one_of(trees(), trees(with_scores=True)))
@settings(max_examples=150, deadline=None)
def test_lead_path_first_puts_the_best_path_of_a_deterministic_tree_first(tree):
    moved = tree.lead_path_first()
    DraftTree(moved.tokens, moved.parents, scores=moved.scores)  # parents first, distinct siblings
    assert token_paths(moved) == token_paths(tree)
    best = tree.best_path()
    assert moved.leading_chain() >= len(best)
    assert moved.chain_tokens() == tree.chain_tokens() == [int(t) for t in moved.tokens[: len(best)]]
    if tree.scores is not None:  # each node keeps its own score: compare per token path
        score_of = lambda t: {tuple(int(t.tokens[a]) for a in t.path_to(i)): float(t.scores[i])  # noqa: E731
                              for i in range(t.num_nodes)}
        assert score_of(moved) == score_of(tree)


@given(trees())
@settings(max_examples=100, deadline=None)
def test_lead_path_first_keeps_each_stochastic_nodes_children_in_draw_order(tree):
    """Recursive rejection reads siblings in index order as their draw order: the layout may move
    the first-drawn children's path forward but never reorder siblings."""
    n = tree.num_nodes
    q = np.full((n, 4), 0.25, np.float32)
    stochastic = DraftTree(tree.tokens, tree.parents, draft_probs=q, deterministic=False)
    moved = stochastic.lead_path_first()
    assert token_paths(moved) == token_paths(tree)
    sibling_tokens = lambda t, node: [int(t.tokens[c]) for c in t.children(node)]  # noqa: E731
    path_tokens = lambda t, node: tuple(int(t.tokens[a]) for a in t.path_to(node))  # noqa: E731
    where = {path_tokens(moved, i): i for i in range(n)}
    assert sibling_tokens(moved, -1) == sibling_tokens(stochastic, -1)
    for i in range(n):
        assert sibling_tokens(moved, where[path_tokens(stochastic, i)]) == sibling_tokens(stochastic, i)
    first = [int(stochastic.tokens[i]) for i in stochastic.lead_path()]
    assert [int(t) for t in moved.tokens[: len(first)]] == first and moved.leading_chain() >= len(first)


def test_leading_chain_counts_the_single_path_from_node_0():
    assert DraftTree(np.array([1, 2, 3, 4]), np.array([-1, 0, 1, 0])).leading_chain() == 3
    assert DraftTree(np.array([1, 2]), np.array([-1, -1])).leading_chain() == 1
    assert DraftTree.chain([5, 6, 7]).leading_chain() == 3
    assert DraftTree.empty().leading_chain() == 0


def test_best_path_without_scores_is_longest():
    t = DraftTree.from_paths([[1, 2], [3, 4, 5], [6]])
    assert t.chain_tokens() == [3, 4, 5]


@given(trees(), st.integers(0, 8))
@settings(max_examples=100, deadline=None)
def test_pad_to_adds_inert_nodes(tree, extra):
    padded = tree.pad_to(tree.num_nodes + extra)
    assert padded.num_nodes == tree.num_nodes + extra
    assert (padded.tokens[tree.num_nodes :] == PAD_TOKEN).all()
    assert token_paths(padded) == token_paths(tree)
    if tree.num_nodes:
        with pytest.raises(ValueError, match="prune first"):
            tree.pad_to(tree.num_nodes - 1)


@given(trees(), st.integers(0, 6))
@settings(max_examples=100, deadline=None)
def test_sglang_layout_encodes_the_tree(tree, extra):
    width = tree.num_nodes + 1 + extra
    toks, mask = tree.to_sglang(root_token=99, width=width, pad_token_id=0)
    m = mask.reshape(width, width)
    assert toks[0] == 99 and m[0].sum() == 1 and m[0, 0]
    # reconstruct each node's parent as its deepest strict ancestor in the mask (what SGLang does)
    for i in range(1, tree.num_nodes + 1):
        ancestors = [j for j in range(width) if m[i, j] and j != i]
        parent = max(ancestors, key=lambda j: m[j].sum())
        assert parent == tree.parents[i - 1] + 1
        assert toks[i] == tree.tokens[i - 1]
    for i in range(tree.num_nodes + 1, width):  # padding: root + itself
        assert set(np.flatnonzero(m[i])) == {0, i}


def test_invalid_trees_name_the_node():
    with pytest.raises(ValueError, match="node 2: parent 2"):
        DraftTree([1, 2, 3], [-1, 0, 2])
    with pytest.raises(ValueError, match="node 1: parent 5"):
        DraftTree([1, 2], [-1, 5])
    with pytest.raises(ValueError, match="node 2: token 7 duplicates sibling node 1"):
        DraftTree([1, 7, 7], [-1, 0, 0])
    with pytest.raises(ValueError, match="parents has 1"):
        DraftTree([1, 2], [-1])
    with pytest.raises(ValueError, match="needs draft_probs"):
        DraftTree([1], [-1], deterministic=False)
    q = np.full((2, 3), 1 / 3, np.float32)
    q[1] = [0.5, 0.25, 0.25]
    with pytest.raises(ValueError, match="node 1: draft_probs differs from sibling node 0"):
        DraftTree([0, 1], [-1, -1], draft_probs=q, deterministic=False)


def test_from_paths_and_chain():
    t = DraftTree.from_paths([[5, 6, 7], [5, 8], [9]])
    assert token_paths(t) == {(5,), (5, 6), (5, 6, 7), (5, 8), (9,)}
    c = DraftTree.chain([3, 1, 4])
    assert list(c.parents) == [-1, 0, 1] and list(c.depths()) == [1, 2, 3]
    assert DraftTree.empty().num_nodes == 0
    assert DraftTree.empty().attention_mask(3).shape == (1, 4)


def test_tree_batch_pads_ragged_trees():
    rng = np.random.default_rng(0)
    ts = [random_tree(rng, n, 8) for n in (0, 1, 5, 3)]
    b = TreeBatch.from_trees(ts, width=6)
    assert b.tokens.shape == (4, 6) and list(b.num_nodes) == [0, 1, 5, 3]
    for i, t in enumerate(ts):
        assert list(b.tokens[i, : t.num_nodes]) == list(t.tokens)
        assert (b.tokens[i, t.num_nodes :] == PAD_TOKEN).all()
        assert list(b.depths[i, : t.num_nodes]) == list(t.depths())
    with pytest.raises(ValueError, match="tree 2 has 5 nodes"):
        TreeBatch.from_trees(ts, width=4)


@given(st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, -0.5]), min_size=1, max_size=12))
@settings(max_examples=150, deadline=None)
def test_best_path_of_a_chain_is_the_prefix_with_the_largest_sum(scores):
    """Chains take a shortcut (the whole chain when no score is negative); with negative scores
    the best prefix may stop early. Ties: the deeper node."""
    chain = DraftTree.chain(list(range(2, 2 + len(scores))), scores=np.asarray(scores, np.float32))
    sums = np.cumsum(np.asarray(scores, np.float64))
    best = max(range(len(scores)), key=lambda i: (sums[i], i))
    assert chain.leading_chain() == chain.num_nodes
    assert chain.best_path() == list(range(best + 1))
