"""RASD retrieval, pruning and fusion against brute force."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specplug.config import SpecplugConfig, SpecplugConfigError
from specplug.proposers.base import Budget, ReqState
from specplug.proposers.rasd import (CorpusIndex, RasdOptions, RasdProposer, context_candidates, fused_draft,
                                     prune_retrieval, retrieval_tree)
from specplug.tree import DraftTree
from tests.tree_strategies import random_tree


def token_paths(tree):
    return {tuple(int(tree.tokens[j]) for j in tree.path_to(i)) for i in range(tree.num_nodes)}


def prefixes(cands):
    return {tuple(c[:i]) for c in cands for i in range(1, len(c) + 1)}


@given(st.lists(st.integers(0, 4), min_size=2, max_size=60), st.integers(1, 3), st.integers(1, 4))
@settings(max_examples=150, deadline=None)
def test_context_retrieval_matches_brute_force(ctx, min_n, extra):
    max_n = min_n + extra
    got = context_candidates(np.asarray(ctx), min_n, max_n, 10_000, 5)
    want = []
    for n in range(min(max_n, len(ctx) - 1), min_n - 1, -1):
        for i in range(len(ctx) - 1 - n, -1, -1):
            if ctx[i : i + n] == ctx[-n:] and i + n < len(ctx):
                want.append(ctx[i + n : i + n + 5])
    assert got == want


def composed(drafter, cands, cap, top_k, thr, chain):
    """What fused_draft computes, written as the paper's steps on DraftTrees."""
    ret = prune_retrieval(retrieval_tree(cands), drafter, top_k, thr)
    tree = (drafter.merge(ret) if drafter is not None and drafter.num_nodes else ret).prune(cap)
    return tree.chain_of_best() if chain and tree.num_nodes else tree


@given(st.integers(0, 2**31), st.integers(0, 20), st.integers(1, 3), st.sampled_from([0.0, 0.3]),
       st.sampled_from(["none", "empty", "scored", "unscored"]), st.booleans())
@settings(max_examples=400, deadline=None)
def test_fused_draft_equals_the_composed_steps(seed, cap, top_k, thr, drafter_kind, chain):
    rng = np.random.default_rng(seed)
    cands = [rng.integers(0, 4, size=int(rng.integers(1, 6))).tolist() for _ in range(int(rng.integers(0, 10)))]
    drafter = {"none": None, "empty": DraftTree.empty(),
               "scored": random_tree(rng, int(rng.integers(1, 10)), 4, with_scores=True),
               "unscored": random_tree(rng, int(rng.integers(1, 10)), 4, with_scores=False)}[drafter_kind]
    want = composed(drafter, cands, cap, top_k, thr, chain)
    got = fused_draft(drafter, cands, cap, top_k, thr, chain)
    assert got.tokens.tolist() == want.tokens.tolist() and got.parents.tolist() == want.parents.tolist()
    if want.num_nodes:
        assert got.scores.tolist() == want.scores.tolist()
    got.validate(distinct_siblings=True)


@given(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=6), max_size=12))
@settings(max_examples=150, deadline=None)
def test_retrieval_tree_is_the_trie_with_frequencies(cands):
    t = retrieval_tree(cands)
    assert token_paths(t) == prefixes(cands)
    for i in range(t.num_nodes):
        path = tuple(int(t.tokens[j]) for j in t.path_to(i))
        assert t.scores[i] == pytest.approx(sum(tuple(c[: len(path)]) == path for c in cands) / max(len(cands), 1))


@given(st.integers(0, 2**31), st.integers(1, 3), st.sampled_from([0.0, 0.3]))
@settings(max_examples=150, deadline=None)
def test_prune_and_fuse_against_brute_force(seed, top_k, thr):
    rng = np.random.default_rng(seed)
    cands = [rng.integers(0, 4, size=int(rng.integers(1, 5))).tolist() for _ in range(int(rng.integers(0, 8)))]
    ret = retrieval_tree(cands)
    drafter = random_tree(rng, int(rng.integers(0, 10)), 4, with_scores=True)
    pruned = prune_retrieval(ret, drafter, top_k, thr)
    kids = drafter.children(-1)
    top = {int(drafter.tokens[c]) for c in sorted(kids, key=lambda c: (-drafter.scores[c], c))[:top_k]}
    if drafter.num_nodes:
        keep_first = {c[0] for c in cands if c[0] in top or (thr > 0 and sum(x[0] == c[0] for x in cands) / len(cands) >= thr)}
        assert token_paths(pruned) == {p for p in prefixes(cands) if p[0] in keep_first}
    fused = drafter.merge(pruned)
    assert token_paths(fused) == token_paths(drafter) | token_paths(pruned)
    fused.validate(distinct_siblings=True)


def test_corpus_retrieval_respects_documents(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text("\n".join(json.dumps({"token_ids": d}) for d in [[1, 2, 3, 4, 5], [9, 1, 2, 7]]))
    prop = RasdProposer(RasdOptions(corpus=str(f), min_ngram=2, max_ngram=2), 8)
    (t,) = prop.propose([ReqState("r", np.array([8, 1, 2]), 3)], [Budget(8)])
    assert token_paths(t) == {(3,), (3, 4), (3, 4, 5), (7,)}  # doc 2's continuation stops at its end


def test_fuse_with_suffix_and_budget():
    prop = RasdProposer(RasdOptions(fuse_with="suffix"), 4)
    ctx = [1, 2, 3, 4, 1, 2, 3, 5, 1, 2, 3]
    (t,) = prop.propose([ReqState("r", np.array(ctx), 2)], [Budget(4)])
    assert 0 < t.num_nodes <= 4
    assert {(4,), (5,)} & token_paths(t)


@pytest.mark.parametrize("bad, key", [({"corpus": "/no/such/dir"}, "rasd.corpus"), ({"min_ngram": 0}, "rasd.min_ngram"),
                                      ({"min_ngram": 3, "max_ngram": 2}, "rasd"), ({"fuse_with": "magic"}, "rasd.fuse_with")])
def test_bad_options_name_the_key(bad, key):
    with pytest.raises(SpecplugConfigError, match=key.replace(".", r"\.")):
        SpecplugConfig(method="rasd", rasd=bad)
