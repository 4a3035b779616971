"""KV compaction after tree verification (Triton), beside its torch reference.

A verify step writes the KV of ``[root, node 0, ..., node n-1]`` into the slots the engine
reserved for logical positions ``prefix + 0 .. prefix + n`` (the engine believes it scheduled a
chain). After verification accepts the path ``a_1, ..., a_k`` (node ids, depth d = 1..k), the
KV of node ``a_d`` must sit in the slot of logical position ``prefix + d`` before the next step,
so that the engine's cache again holds exactly the committed sequence. The other nodes' slots
become garbage that the next step overwrites.

Inputs, per request b (padded to width W):
- ``slots[b, j]``: the cache slot of verify-window index j (j = 0 is the root, j = 1 + i is
  node i); int64 [B, W + 1];
- ``accepted[b, d - 1]``: the node id accepted at depth d (-1 padded); int32 [B, W];
- ``num_accepted[b]``: k.

In-place safety: a node's id is at least its depth minus one (parents precede children), so
node ``a_d`` sits at window index ``1 + a_d >= d``. Copies done in increasing d only ever read
window indices above every index written so far (``a_d`` increases strictly along a path), so
one sequential pass per request never reads a slot it has already overwritten. The reference
does the same pass; the kernel parallelises over requests and over the row's elements.

The cache is a 4-D tensor ``[num_blocks, block_size, H, D]`` with any strides, so a layout such
as ``[num_blocks, H, block_size, D]`` is passed as ``cache.permute(0, 2, 1, 3)``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def kv_compact_reference(cache: torch.Tensor, slots: torch.Tensor, accepted: torch.Tensor,
                         num_accepted: torch.Tensor) -> None:
    """In place: for each request, window index d <- window index 1 + accepted[d - 1], d = 1..k."""
    bs = cache.shape[1]
    for b in range(slots.shape[0]):
        for d in range(1, int(num_accepted[b]) + 1):
            src = int(slots[b, 1 + int(accepted[b, d - 1])])
            dst = int(slots[b, d])
            if src != dst:
                cache[dst // bs, dst % bs] = cache[src // bs, src % bs]


@triton.jit
def kv_compact_kernel(cache_ptr, slots_ptr, acc_ptr, num_ptr, W, BLOCK_SIZE, H, D,
                      s0, s1, s2, s3, TILE: tl.constexpr):
    b = tl.program_id(0)
    tile = tl.program_id(1)
    e = tile * TILE + tl.arange(0, TILE)  # element of the row: h * D + dd
    inside = e < H * D
    off = (e // D) * s2 + (e % D) * s3
    k = tl.load(num_ptr + b)
    for d in range(1, k + 1):
        node = tl.load(acc_ptr + b * W + d - 1)
        src = tl.load(slots_ptr + b * (W + 1) + 1 + node)
        dst = tl.load(slots_ptr + b * (W + 1) + d)
        row = tl.load(cache_ptr + (src // BLOCK_SIZE) * s0 + (src % BLOCK_SIZE) * s1 + off, mask=inside)
        tl.store(cache_ptr + (dst // BLOCK_SIZE) * s0 + (dst % BLOCK_SIZE) * s1 + off, row, mask=inside)


def kv_compact(cache: torch.Tensor, slots: torch.Tensor, accepted: torch.Tensor,
               num_accepted: torch.Tensor, tile: int = 256) -> None:
    """In place on ``cache`` ([num_blocks, block_size, H, D], any strides); see the module doc."""
    if cache.ndim != 4:
        raise ValueError(f"cache must be [num_blocks, block_size, H, D], got {tuple(cache.shape)}")
    b, w1 = slots.shape
    if accepted.shape != (b, w1 - 1) or num_accepted.shape != (b,):
        raise ValueError(f"accepted must be [B, W] = [{b}, {w1 - 1}] and num_accepted [B]; got "
                         f"{tuple(accepted.shape)}, {tuple(num_accepted.shape)}")
    if b == 0:
        return
    _, block_size, h, d = cache.shape
    grid = (b, triton.cdiv(h * d, tile))
    kv_compact_kernel[grid](cache, slots.to(torch.int64).contiguous(), accepted.to(torch.int32).contiguous(),
                            num_accepted.to(torch.int32).contiguous(), w1 - 1, block_size, h, d,
                            *cache.stride(), TILE=tile)
