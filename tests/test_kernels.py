"""Triton kernels (under TRITON_INTERPRET=1 on CPU) and the vectorised torch versions equal the
reference verifiers token for token, on random ragged batches."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: CPU interpreter

import numpy as np
import pytest
import torch

from specplug.kernels import torch_batched, tree_greedy_verify, tree_layout, tree_sample_match_verify
from specplug.kernels._launch import tree_tensors
from specplug.tree import DraftTree
from specplug.verify import greedy_verify_batch, sample_and_match_batch
from tests.test_verify_greedy import logits_favouring_tree
from tests.tree_strategies import random_tree

pytest.importorskip("triton")


def random_batch(rng, b: int, max_nodes: int, vocab: int, shapes: str = "random") -> list[DraftTree]:
    trees = []
    for i in range(b):
        n = int(rng.integers(0, max_nodes + 1))
        if shapes == "edge":
            kind = i % 4
            if kind == 0:
                trees.append(DraftTree.empty())
                continue
            if kind == 1:
                trees.append(DraftTree(rng.permutation(vocab)[: min(n, vocab)] if n else [int(rng.integers(vocab))],
                                       [-1] * max(min(n, vocab), 1)))  # depth-1 tree
                continue
            if kind == 2:
                trees.append(DraftTree.chain(rng.integers(0, vocab, size=max(n, 1))))
                continue
        trees.append(random_tree(rng, n, vocab))
    return trees


def fresh_logits(rng, trees, vocab, width):
    logits = torch.tensor(rng.normal(size=(len(trees), width + 1, vocab)), dtype=torch.float32)
    for i, t in enumerate(trees):
        logits[i, : t.num_nodes + 1] = logits_favouring_tree(t, vocab, rng)
    return logits


def assert_same(got, ref):
    assert torch.equal(got.num_accepted, ref.num_accepted)
    assert torch.equal(got.accepted_nodes, ref.accepted_nodes)
    assert torch.equal(got.tokens, ref.tokens)
    assert not (got.tokens == -7).any() and not (got.accepted_nodes == -7).any()  # every element written


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shapes", ["random", "edge"])
def test_greedy_kernel_equals_reference(seed, shapes):
    rng = np.random.default_rng(seed)
    vocab = int(rng.choice([5, 37, 300]))  # 300: not a multiple of the block size
    trees = random_batch(rng, 6, 14, min(vocab, 8), shapes)
    width = max(t.num_nodes for t in trees) + int(rng.integers(0, 3))  # extra padding columns
    logits = fresh_logits(rng, trees, vocab, width)
    tok, par, n = tree_tensors(trees, width)
    ref = greedy_verify_batch(trees, logits)
    assert_same(tree_greedy_verify(logits, tok, par, n, block_v=64), ref)
    assert_same(torch_batched.greedy_verify(logits, tok, par, n), ref)


def test_greedy_kernel_argmax_ties_take_lowest_id():
    trees = [DraftTree([3], [-1]), DraftTree([0], [-1])]
    logits = torch.zeros(2, 2, 130)
    logits[:, :, 3] = 1.0
    logits[:, :, 100] = 1.0  # tie across blocks of 64: lowest id (3) wins
    tok, par, n = tree_tensors(trees)
    ref = greedy_verify_batch(trees, logits)
    assert_same(tree_greedy_verify(logits, tok, par, n, block_v=64), ref)
    assert ref.tokens[0].tolist() == [3, 3]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shapes", ["random", "edge"])
def test_sample_match_kernel_equals_reference(seed, shapes):
    rng = np.random.default_rng(100 + seed)
    vocab = int(rng.choice([4, 6, 130]))
    trees = random_batch(rng, 6, 12, min(vocab, 6), shapes)
    width = max(t.num_nodes for t in trees) + int(rng.integers(0, 3))
    probs = torch.softmax(torch.tensor(rng.normal(scale=2.0, size=(6, width + 1, vocab)), dtype=torch.float32), -1)
    probs[probs < 0.02] = 0.0  # zero-mass tokens must never be drawn
    uniforms = torch.tensor(rng.random((6, width + 1, 2)), dtype=torch.float64)
    tok, par, n = tree_tensors(trees, width)
    ref = sample_and_match_batch(trees, probs, uniforms)
    assert_same(tree_sample_match_verify(probs, uniforms, tok, par, n, block_v=32), ref)
    assert_same(torch_batched.sample_match_verify(probs, uniforms, tok, par, n), ref)


@pytest.mark.parametrize("seed", range(4))
def test_layout_kernel_equals_tree_ops(seed):
    rng = np.random.default_rng(200 + seed)
    trees = random_batch(rng, 5, 16, 6) + [DraftTree.empty()]
    width = max(t.num_nodes for t in trees) + 2
    _, par, n = tree_tensors(trees, width)
    prefix = torch.tensor(rng.integers(0, 50, size=len(trees)), dtype=torch.int32)
    mask, depth, pos = tree_layout(par, n, prefix)
    assert not (mask == -7).any() and not (depth == -7).any() and not (pos == -7).any()
    tb_anc = torch_batched.ancestor_masks(par, n)
    for i, t in enumerate(trees):
        k = t.num_nodes
        assert np.array_equal(mask[i, :k, :k].numpy().astype(bool), t.ancestor_mask())
        assert np.array_equal(tb_anc[i, :k, :k].numpy(), t.ancestor_mask())
        assert np.array_equal(depth[i, :k].numpy(), t.depths())
        assert np.array_equal(pos[i, : k + 1].numpy(), t.position_ids(int(prefix[i])))
        assert (mask[i, k:, :].sum(-1) == 1).all() and (depth[i, k:] == 0).all()  # padding: self only
