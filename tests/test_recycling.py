"""Token Recycling against a brute-force fill of the static template."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specplug.config import SpecplugConfig, SpecplugConfigError
from specplug.proposers.base import Budget, ReqState, VerifyInfo
from specplug.proposers.recycling import DEFAULT_LEVEL_SIZES, RecyclingOptions, RecyclingProposer, default_template
from specplug.tree import DraftTree


def test_default_template_shape():
    paths = default_template(8)
    assert len(paths) == 80
    depths = [len(p) for p in paths]
    assert [depths.count(d) for d in range(1, 7)] == list(DEFAULT_LEVEL_SIZES)
    assert all(p[:-1] in set(paths) for p in paths if len(p) > 1)
    assert (0, 0, 0, 0, 0, 0) in paths  # rank-0 chain goes all the way down


def brute_force_fill(a: np.ndarray, root: int, paths) -> set[tuple[int, ...]]:
    """Token paths of the filled tree: follow each template path's ranks through A; a path is
    dropped if any step is unknown or duplicates an earlier sibling (first in template order wins)."""
    out: dict[tuple[int, ...], tuple[int, ...]] = {}  # rank path -> token path
    sibling_tokens: dict[tuple[int, ...], set] = {}
    for p in paths:
        parent = p[:-1]
        if parent and parent not in out:
            continue
        prev_tok = root if not parent else out[parent][-1]
        t = int(a[prev_tok, p[-1]])
        toks_parent = out.get(parent, ())
        if t < 0 or t in sibling_tokens.setdefault(toks_parent, set()):
            continue
        sibling_tokens[toks_parent].add(t)
        out[p] = toks_parent + (t,)
    return set(out.values())


def token_paths(tree: DraftTree) -> set[tuple[int, ...]]:
    return {tuple(int(tree.tokens[j]) for j in tree.path_to(i)) for i in range(tree.num_nodes)}


@given(st.integers(0, 2**31), st.integers(2, 6))
@settings(max_examples=60, deadline=None)
def test_fill_matches_brute_force(seed, vocab):
    rng = np.random.default_rng(seed)
    prop = RecyclingProposer(RecyclingOptions(k=4, vocab_size=vocab), 200)
    a = rng.integers(-1, vocab, size=(vocab, 4)).astype(np.int32)
    prop._tables[None] = a
    root = int(rng.integers(0, vocab))
    (tree,) = prop.propose([ReqState("r", np.array([root]), 1)], [Budget(200)])
    assert token_paths(tree) == brute_force_fill(a, root, prop.paths)
    tree.validate(distinct_siblings=True)


@given(st.integers(0, 2**31), st.integers(2, 6), st.integers(1, 40))
@settings(max_examples=60, deadline=None)
def test_budgeted_fill_keeps_what_pruning_the_full_tree_keeps(seed, vocab, cap):
    """Drafting looks up only the nodes it keeps; the result must be the full fill pruned to cap."""
    rng = np.random.default_rng(seed)
    prop = RecyclingProposer(RecyclingOptions(k=4, vocab_size=vocab), 200)
    a = rng.integers(-1, vocab, size=(vocab, 4)).astype(np.int32)
    root = int(rng.integers(0, vocab))
    full = prop._fill(a, root, len(prop.paths)).prune(cap)
    got = prop._fill(a, root, cap)
    assert got.tokens.tolist() == full.tokens.tolist() and got.parents.tolist() == full.parents.tolist()


def test_chain_follows_the_rank0_successor_up_to_the_budget():
    prop = RecyclingProposer(RecyclingOptions(k=2, vocab_size=10), 16)
    a = prop.table()
    a[:, 0] = [1, 2, 3, 1, -1, -1, -1, -1, -1, -1]  # 0 -> 1 -> 2 -> 3 -> 1 -> ...
    (t,) = prop.propose([ReqState("r", np.array([0]), 1)], [Budget(7, tree=False)])
    assert t.chain_tokens() == [1, 2, 3, 1, 2, 3, 1]
    a[3, 0] = -1
    (t,) = prop.propose([ReqState("r", np.array([0]), 1)], [Budget(7, tree=False)])
    assert t.chain_tokens() == [1, 2, 3]


def test_recycles_topk_of_every_verified_node_including_rejected():
    prop = RecyclingProposer(RecyclingOptions(k=2, vocab_size=10), 8)
    tree = DraftTree([3, 4], [-1, -1])  # two siblings below root 7
    topk = np.array([[3, 5], [8, 9], [1, 2]], np.int32)  # rows: root, node 0, node 1 (rejected)
    prop.observe("r", [3, 8], VerifyInfo(tree, [0], topk, root_token=7))
    a = prop.table()
    assert a[7].tolist() == [3, 5] and a[3].tolist() == [8, 9] and a[4].tolist() == [1, 2]
    (t,) = prop.propose([ReqState("r", np.array([0, 7]), 1)], [Budget(8)])
    assert token_paths(t) >= {(3,), (5,), (3, 8), (3, 9)}


def test_learns_successors_without_topk_and_hot_starts():
    prop = RecyclingProposer(RecyclingOptions(k=3), 8)
    prop.start("a", [1])
    prop.observe("a", [2, 3, 4], VerifyInfo(DraftTree.empty(), [], None, root_token=1))
    prop.stop("a")
    (t,) = prop.propose([ReqState("b", np.array([9, 1]), 1)], [Budget(8, tree=False)])  # another request
    assert t.chain_tokens() == [2, 3, 4]


def test_tenant_isolation():
    prop = RecyclingProposer(RecyclingOptions(tenant_isolation=True), 8)
    prop.start("a", [1], tenant="x")
    prop.observe("a", [2, 3], VerifyInfo(DraftTree.empty(), [], None, root_token=1))
    prop.start("b", [1], tenant="y")
    (t,) = prop.propose([ReqState("b", np.array([1]), 1, "y")], [Budget(8)])
    assert t.num_nodes == 0


@pytest.mark.parametrize("bad, key", [({"k": 0}, "recycling.k"), ({"template": [[0, 1]]}, "recycling.template"),
                                      ({"vocab_size": -3}, "recycling.vocab_size")])
def test_bad_options_name_the_key(bad, key):
    with pytest.raises(SpecplugConfigError, match=key.replace(".", r"\.")):
        SpecplugConfig(method="recycling", recycling=bad)
