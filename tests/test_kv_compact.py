"""KV compaction after tree verification: the Triton kernel (TRITON_INTERPRET=1 on CPU) and its
torch reference both equal a brute-force recomputation from the untouched cache, for random
trees, random accepted paths, random (unique) slot assignments and two cache layouts."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: CPU interpreter

import numpy as np
import pytest
import torch

from specplug.kernels.kv_compact import kv_compact_reference

pytest.importorskip("triton")


def random_case(rng, b: int, max_nodes: int, num_blocks: int, block_size: int):
    """Per request: random parents, a random root-to-node accepted path, and a window of slots
    that is either consecutive (as an engine usually assigns) or scattered; never overlapping."""
    w = max_nodes
    assert num_blocks * block_size >= 2 * b * (w + 1)
    slots = torch.full((b, w + 1), -1, dtype=torch.int64)
    accepted = torch.full((b, w), -1, dtype=torch.int32)
    num = torch.zeros(b, dtype=torch.int32)
    lanes = rng.permutation(b)  # consecutive windows live in [0, b * (w + 1))
    scattered = iter(rng.permutation(np.arange(b * (w + 1), num_blocks * block_size)).tolist())
    for i in range(b):
        n = int(rng.integers(0, max_nodes + 1))
        parents = [int(rng.integers(-1, j)) for j in range(n)]  # parent < child; -1 = root
        path = []
        if n and rng.random() < 0.9:
            node = int(rng.integers(0, n))
            while node >= 0:
                path.append(node)
                node = parents[node]
            path.reverse()
        if rng.random() < 0.5:
            start = int(lanes[i]) * (w + 1)
            window = list(range(start, start + n + 1))
        else:
            window = [next(scattered) for _ in range(n + 1)]
        slots[i, : n + 1] = torch.tensor(window, dtype=torch.int64)
        accepted[i, : len(path)] = torch.tensor(path, dtype=torch.int32)
        num[i] = len(path)
    return slots, accepted, num


def brute_force(original: torch.Tensor, slots, accepted, num) -> torch.Tensor:
    """Rebuild the expected cache from the ORIGINAL values: depth d gets node a_d's KV."""
    out = original.clone()
    bs = original.shape[1]
    for b in range(slots.shape[0]):
        for d in range(1, int(num[b]) + 1):
            src = int(slots[b, 1 + int(accepted[b, d - 1])])
            dst = int(slots[b, d])
            out[dst // bs, dst % bs] = original[src // bs, src % bs]
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("layout", ["blocks_slots_heads_dim", "blocks_heads_slots_dim"])
def test_kernel_and_reference_equal_brute_force(seed, layout):
    from specplug.kernels.kv_compact import kv_compact

    rng = np.random.default_rng(seed)
    num_blocks, block_size, h, d = 16, 8, 3, 20  # H*D = 60: not a power of two, masked tail
    slots, accepted, num = random_case(rng, b=5, max_nodes=9, num_blocks=num_blocks, block_size=block_size)
    if layout == "blocks_slots_heads_dim":
        cache = torch.randn(num_blocks, block_size, h, d)
        view = lambda c: c  # noqa: E731
    else:  # stored [num_blocks, H, block_size, D], passed as a permuted view
        cache = torch.randn(num_blocks, h, block_size, d)
        view = lambda c: c.permute(0, 2, 1, 3)  # noqa: E731
    expected = brute_force(view(cache), slots, accepted, num)
    assert not torch.equal(expected, view(cache))  # the case really moves KV
    ref = cache.clone()
    kv_compact_reference(view(ref), slots, accepted, num)
    ker = cache.clone()
    kv_compact(view(ker), slots, accepted, num, tile=32)
    assert torch.equal(view(ref), expected)
    assert torch.equal(view(ker), expected)


def test_chain_acceptance_moves_nothing_and_empty_batch_is_fine():
    from specplug.kernels.kv_compact import kv_compact

    cache = torch.randn(2, 4, 1, 8)
    before = cache.clone()
    slots = torch.tensor([[0, 1, 2, 3]])
    kv_compact(cache, slots, torch.tensor([[0, 1, 2]], dtype=torch.int32), torch.tensor([3], dtype=torch.int32))
    assert torch.equal(cache, before)  # a chain's node i sits at depth i + 1 already
    kv_compact(cache, slots[:0], torch.zeros((0, 3), dtype=torch.int32), torch.zeros(0, dtype=torch.int32))


def test_bad_shapes_are_named():
    from specplug.kernels.kv_compact import kv_compact

    with pytest.raises(ValueError, match="cache must be"):
        kv_compact(torch.zeros(4, 8), torch.zeros((1, 3), dtype=torch.int64),
                   torch.zeros((1, 2), dtype=torch.int32), torch.zeros(1, dtype=torch.int32))
    with pytest.raises(ValueError, match="accepted must be"):
        kv_compact(torch.zeros(1, 4, 1, 2), torch.zeros((1, 3), dtype=torch.int64),
                   torch.zeros((1, 5), dtype=torch.int32), torch.zeros(1, dtype=torch.int32))
