"""The pieces of tree verification inside vLLM (specplug/engines/vllm/tree_step.py) against
brute-force recomputation: positions, the window mask, paged tree attention, greedy acceptance
and KV compaction. No vLLM needed."""

import numpy as np
import pytest
import torch

from specplug.engines.vllm import tree_step
from specplug.tree import DraftTree

# root -> a(0) -> c(2) -> e(4); root -> b(1) -> d(3)
TREE = DraftTree(np.array([10, 11, 12, 13, 14]), np.array([-1, -1, 0, 1, 2]))


def test_window_mask_is_ancestors_plus_root():
    m = tree_step.window_mask(TREE).numpy()
    # window index 0 = root, 1 + i = node i
    want = np.zeros((6, 6), bool)
    for q, path in enumerate([[0], [0, 1], [0, 2], [0, 1, 3], [0, 2, 4], [0, 1, 3, 5]]):
        want[q, path] = True
    assert (m == want).all()


def test_positions_are_prefix_plus_depth():
    assert TREE.position_ids(7).tolist() == [7, 8, 8, 9, 9, 10]


def split(cache):
    """The CPU backend's view: [nb, H, bs, 2D] as [nb, H, 2 bs, D], keys first."""
    nb, h, bs, _ = cache.shape
    return cache.view(nb, h, bs * 2, -1).chunk(2, dim=2)


def tiled_write(key, value, cache, slots):
    """A cache-write kernel with an ISA-like layout: each block's (slot, dim) values stored
    transposed (dim-major) for keys and with slots reversed for values."""
    kc, vc = split(cache)
    nb, h, bs, D = kc.shape
    for i, s in enumerate(slots.tolist()):
        b, o = divmod(s, bs)
        kflat = kc[b].reshape(h, bs * D)  # views: the block's rows are contiguous
        vflat = vc[b].reshape(h, bs * D)
        kflat[:, torch.arange(D) * bs + o] = key[i]
        vflat[:, (bs - 1 - o) * D + torch.arange(D)] = value[i]


def plain_write(key, value, cache, slots):
    kc, vc = split(cache)
    bs = kc.shape[2]
    for i, s in enumerate(slots.tolist()):
        kc[s // bs, :, s % bs] = key[i]
        vc[s // bs, :, s % bs] = value[i]


@pytest.mark.parametrize("write", [plain_write, tiled_write], ids=["plain", "tiled"])
def test_layout_probe_reads_back_what_the_kernel_wrote(write):
    layout = tree_step.CacheLayout.probe(write, 2, 4, 8, torch.float32, split)
    cache = torch.randn(5, 2, 4, 16)
    k, v = torch.randn(10, 2, 8), torch.randn(10, 2, 8)
    blocks = torch.tensor([3, 0, 4])
    write(k, v, cache, torch.tensor([3 * 4 + i for i in range(4)] + [i for i in range(4)] + [16, 17]))
    kc, vc = split(cache)
    assert torch.equal(layout.gather(kc, blocks, 10, keys=True), k)
    assert torch.equal(layout.gather(vc, blocks, 10, keys=False), v)
    for start in range(10):  # a range of positions, as swift reads the newly committed ones
        assert torch.equal(layout.gather(kc, blocks, 10, keys=True, start=start), k[start:])
        assert torch.equal(layout.gather(vc, blocks, 7, keys=False, start=min(start, 7)), v[min(start, 7):7])
        kv = cache.view(-1)[layout.kv_index(blocks, start, 10, 2)]  # the whole layer cache, both halves
        assert torch.equal(kv[0], k[start:]) and torch.equal(kv[1], v[start:])


def test_layout_probe_refuses_a_layout_that_mixes_blocks():
    def broken(key, value, cache, slots):
        kc, vc = split(cache)
        kc.zero_(), vc.zero_()  # writes nothing where it should
    with pytest.raises(RuntimeError, match="layout"):
        tree_step.CacheLayout.probe(broken, 2, 4, 8, torch.float32, split)


@pytest.mark.parametrize("hq,hkv", [(4, 4), (4, 2)])
@pytest.mark.parametrize("write", [plain_write, tiled_write], ids=["plain", "tiled"])
def test_tree_attention_equals_per_path_causal_attention(hq, hkv, write):
    """Each window row attends exactly as it would in plain causal decoding of its own path."""
    prefix, w, D, bs = 9, TREE.num_nodes + 1, 8, 4
    L = prefix + w
    k, v = torch.randn(L, hkv, D), torch.randn(L, hkv, D)
    q = torch.randn(w, hq, D)
    blocks = torch.tensor([5, 1, 7, 2])  # shuffled pages
    cache = torch.randn(8, hkv, bs, 2 * D)  # garbage everywhere else
    write(k, v, cache, torch.tensor([int(blocks[p // bs]) * bs + p % bs for p in range(L)]))
    layout = tree_step.CacheLayout.probe(write, hkv, bs, D, torch.float32, split)
    row = tree_step.TreeRow(0, "r", 0, prefix, TREE)
    got = tree_step.tree_attention(q, cache, row, blocks, L, 0.3, layout)
    # the next layer of the step reuses the index built at the first, and reads the same
    assert row.layer_cache is not None
    torch.testing.assert_close(tree_step.tree_attention(q, cache, row, blocks, L, 0.3, layout), got, rtol=0, atol=0)
    rep = hq // hkv
    for row in range(w):
        path = [] if row == 0 else TREE.path_to(row - 1)
        keys = list(range(prefix + 1)) + [prefix + 1 + n for n in path]  # prefix, root, path
        kk, vv = k[keys].repeat_interleave(rep, 1), v[keys].repeat_interleave(rep, 1)
        att = torch.softmax(torch.einsum("hd,khd->hk", q[row], kk) * 0.3, -1)
        want = torch.einsum("hk,khd->hd", att, vv)
        torch.testing.assert_close(got[row], want, rtol=1e-5, atol=1e-5)


def test_tree_attention_of_the_last_rows_equals_those_rows_of_the_whole_window():
    """The adapter recomputes only the rows after the tree's leading chain (TreeRow.first_masked_row)."""
    prefix, w, D, bs, h = 6, TREE.num_nodes + 1, 8, 4, 2
    L = prefix + w
    k, v, q = torch.randn(L, h, D), torch.randn(L, h, D), torch.randn(w, h, D)
    blocks = torch.tensor([2, 0, 3])
    cache = torch.randn(4, h, bs, 2 * D)
    plain_write(k, v, cache, torch.tensor([int(blocks[p // bs]) * bs + p % bs for p in range(L)]))
    layout = tree_step.CacheLayout.probe(plain_write, h, bs, D, torch.float32, split)
    row = tree_step.TreeRow(0, "r", 0, prefix, TREE)
    whole = tree_step.tree_attention(q, cache, row, blocks, L, 0.3, layout)
    for first in range(w):
        part = tree_step.tree_attention(q[first:], cache, row, blocks, L, 0.3, layout)
        torch.testing.assert_close(part, whole[first:], rtol=1e-6, atol=1e-6)


def test_rows_of_the_leading_chain_are_left_to_the_backend():
    # root -> 0 -> 1 -> 2, and 3 a second child of node 0: window rows 0..3 see what causal rows see
    tree = DraftTree(np.array([1, 2, 3, 4]), np.array([-1, 0, 1, 0]))
    row = tree_step.TreeRow(0, "r", 0, 5, tree)
    assert row.first_masked_row == 4
    causal = torch.tril(torch.ones(5, 5, dtype=torch.bool))
    assert torch.equal(row.mask[:4], causal[:4]) and not torch.equal(row.mask[4], causal[4])
    assert tree_step.TreeRow(0, "r", 0, 5, TREE).first_masked_row == 2  # TREE: root -> 0, then a sibling


def test_greedy_acceptance_follows_the_argmax_path():
    V = 32
    logits = torch.zeros(6, V)
    logits[0, 11] = 1  # root: argmax 11 -> node 1 (b)
    logits[2, 13] = 1  # node 1's row: 13 -> node 3 (d)
    logits[4, 7] = 1  # node 3's row: 7, not drafted -> bonus
    logits[1, 12] = 1  # the other branch would continue, but it was not taken
    nodes, tokens = tree_step.accept(TREE, logits, "greedy")
    assert nodes == [1, 3] and tokens == [11, 13, 7]


@pytest.mark.parametrize("write", [plain_write, tiled_write], ids=["plain", "tiled"])
def test_compact_kv_moves_accepted_nodes_into_chain_slots(write):
    nb, H, bs, D = 6, 2, 4, 3
    layout = tree_step.CacheLayout.probe(write, H, bs, D, torch.float32, split)
    cache = torch.zeros(nb, H, bs, 2 * D)
    window = list(range(5, 11))  # [root, n0..n4] at slots 5..10
    k, v = torch.randn(6, H, D), torch.randn(6, H, D)
    write(k, v, cache, torch.tensor(window))
    # accepted path b (node 1), d (node 3): window 2 -> slot 6, window 4 -> slot 7
    moves = [(window[1 + 1], window[1]), (window[1 + 3], window[2])]
    tree_step.compact_kv([cache, cache], moves, split, layout)  # the same cache twice moves once
    kc, vc = split(cache)
    gk, gv = layout.gather(kc, torch.arange(nb), 11, True), layout.gather(vc, torch.arange(nb), 11, False)
    for slot, want in ((5, 0), (6, 2), (7, 4), (8, 3), (9, 4), (10, 5)):  # 8.. keep their old values
        assert torch.equal(gk[slot], k[want]) and torch.equal(gv[slot], v[want])


def test_is_chain():
    assert tree_step.is_chain(np.array([-1, 0, 1]))
    assert not tree_step.is_chain(TREE.parents)


def test_sampled_acceptance_is_exact_and_seeded():
    """sample mode: every committed token is a draw from softmax(logits / T) along the path
    (here: the first token's frequencies vs p, chi-square), and a seeded generator repeats."""
    from scipy.stats import chisquare

    V, T = 6, 0.7
    logits = torch.randn(6, V, generator=torch.Generator().manual_seed(1))
    tree = DraftTree(np.array([1, 2, 3, 4, 5]), np.array([-1, -1, 0, 1, 2]))
    gen = torch.Generator().manual_seed(0)
    first = [tree_step.accept(tree, logits, "sample", T, gen)[1][0] for _ in range(4000)]
    p = torch.softmax(logits[0].double() / T, -1).numpy()
    p = p / p.sum()
    counts = np.bincount(first, minlength=V)
    assert chisquare(counts, p * len(first)).pvalue > 1e-3
    a = tree_step.accept(tree, logits, "sample", T, torch.Generator().manual_seed(5))
    b = tree_step.accept(tree, logits, "sample", T, torch.Generator().manual_seed(5))
    assert a == b


def test_a_stochastic_tree_is_verified_by_recursive_rejection():
    """sample mode with a tree drawn from q (DySpec at a request's temperature): the verifier is
    recursive rejection against the tree's q, given the same uniforms as the generator draws."""
    from specplug.verify import recursive_rejection, target_probs

    V, T = 6, 0.7
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, V, generator=g)
    q_root, q_a = torch.softmax(torch.randn(V, generator=g), -1), torch.softmax(torch.randn(V, generator=g), -1)
    # root -> 1, 2 (drawn in that order from q_root); 1 -> 3 (from q_a)
    q = np.stack([q_root, q_root, q_a]).astype(np.float32)
    tree = DraftTree(np.array([1, 2, 3]), np.array([-1, -1, 0]), draft_probs=q, deterministic=False)
    differs = 0
    for seed in range(200):
        got = tree_step.accept(tree, logits[:4], "sample", T, torch.Generator().manual_seed(seed))
        u = torch.rand(4, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        want = recursive_rejection(tree, target_probs(logits[:4], temperature=T), u)
        assert got == (want.accepted_nodes, want.tokens)
        deterministic = DraftTree(tree.tokens, tree.parents)
        differs += got != tree_step.accept(deterministic, logits[:4], "sample", T, torch.Generator().manual_seed(seed))
    assert differs > 0  # not vacuous: sample-and-match would have decided otherwise sometimes
