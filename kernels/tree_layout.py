"""Ancestor masks, depths and position ids for a batch of trees (Triton).

Reference: DraftTree.ancestor_mask / depths / position_ids. Padding slots (i >= num_nodes) see
only themselves, have depth 0 and the root's position; they are never accepted.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from specplug.kernels._launch import next_pow2
from specplug.kernels._tree_walk import ancestor_tile


@triton.jit
def tree_layout_kernel(parents_ptr, num_nodes_ptr, prefix_ptr, mask_ptr, depth_ptr, pos_ptr,
                       W, BLOCK: tl.constexpr, MAX_DEPTH: tl.constexpr):
    b = tl.program_id(0)
    n = tl.load(num_nodes_ptr + b)
    prefix = tl.load(prefix_ptr + b)
    idx = tl.arange(0, BLOCK)
    anc = ancestor_tile(parents_ptr + b * W, n, BLOCK, MAX_DEPTH)
    anc = anc | ((idx[:, None] == idx[None, :]) & (idx[:, None] >= n))  # padding: self only
    depth = tl.sum(anc.to(tl.int32), axis=1)
    depth = tl.where(idx < n, depth, 0)
    inside = (idx[:, None] < W) & (idx[None, :] < W)
    tl.store(mask_ptr + b * W * W + idx[:, None] * W + idx[None, :], anc.to(tl.int8), mask=inside)
    tl.store(depth_ptr + b * W + idx, depth, mask=idx < W)
    # position ids: [root, node 0, ..., node W-1]
    tl.store(pos_ptr + b * (W + 1), prefix)
    tl.store(pos_ptr + b * (W + 1) + 1 + idx, prefix + depth, mask=idx < W)


def tree_layout(parents: torch.Tensor, num_nodes: torch.Tensor, prefix_len: torch.Tensor):
    """parents int32 [B, W], num_nodes [B], prefix_len [B] ->
    (ancestor mask int8 [B, W, W], depths int32 [B, W], position ids int32 [B, W+1])."""
    b, w = parents.shape
    dev = parents.device
    mask = torch.full((b, w, w), -7, dtype=torch.int8, device=dev)
    depth = torch.full((b, w), -7, dtype=torch.int32, device=dev)
    pos = torch.full((b, w + 1), -7, dtype=torch.int32, device=dev)
    if b:
        tree_layout_kernel[(b,)](parents.contiguous(), num_nodes.to(torch.int32).contiguous(),
                                 prefix_len.to(torch.int32).contiguous(), mask, depth, pos, w,
                                 BLOCK=max(next_pow2(w), 2), MAX_DEPTH=max(w, 1))
    return mask, depth, pos
