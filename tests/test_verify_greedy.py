"""Greedy tree verification against a per-path brute force, and verifier input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from specplug.tree import DraftTree
from specplug.verify import (
    greedy_verify,
    greedy_verify_batch,
    sample_and_match,
    sample_from,
    target_probs,
    verify,
)
from tests.tree_strategies import random_tree, trees


def brute_force_greedy(tree: DraftTree, logits: torch.Tensor) -> tuple[list[int], list[int]]:
    """Score every root-to-leaf path by how many leading tokens match the argmax chain."""
    argmax = logits.argmax(-1).tolist()
    best_nodes: list[int] = []
    for path in tree.paths() or [[]]:
        matched, row = [], 0
        for node in path:
            if int(tree.tokens[node]) != argmax[row]:
                break
            matched.append(node)
            row = node + 1
        if len(matched) > len(best_nodes):
            best_nodes = matched
    bonus = argmax[best_nodes[-1] + 1 if best_nodes else 0]
    return best_nodes, [int(tree.tokens[a]) for a in best_nodes] + [bonus]


def logits_favouring_tree(tree: DraftTree, vocab: int, rng: np.random.Generator) -> torch.Tensor:
    """Logits whose argmax follows a random child at many nodes, so long paths get accepted."""
    logits = torch.tensor(rng.normal(size=(tree.num_nodes + 1, vocab)), dtype=torch.float32)
    for row in range(tree.num_nodes + 1):
        kids = tree.children(row - 1)
        if len(kids) and rng.random() < 0.8:
            logits[row, int(tree.tokens[rng.choice(kids)])] += 10.0
    return logits


@given(trees(max_nodes=30, vocab=5), st.integers(0, 2**31))
@settings(max_examples=300, deadline=None)
def test_greedy_equals_brute_force(tree, seed):
    rng = np.random.default_rng(seed)
    logits = logits_favouring_tree(tree, 5, rng)
    res = greedy_verify(tree, logits)
    nodes, toks = brute_force_greedy(tree, logits)
    assert res.accepted_nodes == nodes
    assert res.tokens == toks


def test_greedy_accepts_full_chain_and_bonus():
    t = DraftTree.chain([3, 1, 2])
    logits = torch.full((4, 5), -1.0)
    for row, tok in enumerate([3, 1, 2, 4]):
        logits[row, tok] = 1.0
    r = greedy_verify(t, logits)
    assert r.accepted_nodes == [0, 1, 2] and r.tokens == [3, 1, 2, 4]


def test_greedy_argmax_ties_take_lowest_id():
    t = DraftTree([2], [-1])
    logits = torch.zeros(2, 4)  # all tied: argmax = 0, so token 2 is rejected
    assert greedy_verify(t, logits).tokens == [0]


def test_padding_is_never_accepted():
    t = DraftTree.chain([1]).pad_to(4)
    logits = torch.zeros(5, 3)
    logits[0, 1] = 5.0
    logits[2:, 0] = 5.0  # padding rows would "accept" anything; they are not children of node 0
    assert greedy_verify(t, logits).accepted_nodes == [0]


def test_batch_helper_matches_per_request():
    rng = np.random.default_rng(1)
    ts = [random_tree(rng, n, 6) for n in (0, 3, 7)]
    logits = torch.randn(3, 8, 6)
    out = greedy_verify_batch(ts, logits)
    for i, t in enumerate(ts):
        r = greedy_verify(t, logits[i])
        assert out.num_accepted[i] == r.num_accepted
        assert out.tokens[i, : len(r.tokens)].tolist() == r.tokens
        assert (out.tokens[i, len(r.tokens):] == -1).all()


def test_sample_from_skips_zero_mass_and_is_inverse_cdf():
    p = torch.tensor([0.0, 0.5, 0.0, 0.5])
    assert sample_from(p, 0.0) == 1
    assert sample_from(p, 0.49) == 1
    assert sample_from(p, 0.5) == 3
    assert sample_from(p, 0.999999) == 3
    with pytest.raises(ValueError):
        sample_from(torch.zeros(3), 0.3)


def test_target_probs_filters():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    p = target_probs(logits, temperature=1.0, top_k=2)
    assert (p[0, 2:] == 0).all() and p.sum().item() == pytest.approx(1.0)
    p = target_probs(logits, temperature=1.0, top_p=0.5)
    assert p[0, 0].item() == pytest.approx(1.0)  # top token alone has mass > 0.5
    with pytest.raises(ValueError, match="temperature"):
        target_probs(logits, temperature=0.0)


def test_rows_shape_is_checked():
    t = DraftTree.chain([1, 2])
    with pytest.raises(ValueError, match=r"need \[n\+1, V\] rows"):
        greedy_verify(t, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="stochastic tree"):
        from specplug.verify import recursive_rejection
        recursive_rejection(t, torch.ones(3, 4) / 4, torch.rand(3, 2))


def test_dispatch_by_temperature_and_tree_kind():
    t = DraftTree.chain([1])
    logits = torch.tensor([[0.0, 9.0, 0.0], [9.0, 0.0, 0.0]])
    assert verify(t, logits, temperature=0).tokens == [1, 0]
    g = torch.Generator().manual_seed(0)
    r = verify(t, logits, temperature=1.0, generator=g)
    assert len(r.tokens) in (1, 2)
    u = torch.full((2, 2), 0.5, dtype=torch.float64)
    assert sample_and_match(t, target_probs(logits), u).tokens == [1, 0]
