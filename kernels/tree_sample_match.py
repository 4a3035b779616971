"""Batched tree sample-and-match verification (Triton).

Reference: specplug.verify.sample_and_match / sample_and_match_batch. Row r's draw is the
inverse-CDF sample of probs[r] with uniforms[r, 1]: the first token whose cumulative mass exceeds
u * total (accumulated in float64 like the reference, so zero-mass tokens are never drawn). The
reference draws only at visited nodes; drawing at every row first gives the same tokens because
each row's draw depends only on that row. Then the same walk as greedy, with draws for argmaxes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from specplug.kernels._launch import alloc_outputs, check_batch, next_pow2
from specplug.kernels.tree_greedy import accept_kernel
from specplug.verify import BatchVerifyResult


@triton.jit
def row_sample_kernel(probs_ptr, uniforms_ptr, num_nodes_ptr, out_ptr, W1, V, BLOCK_V: tl.constexpr):
    pid = tl.program_id(0)
    b = pid // W1
    row = pid % W1
    n = tl.load(num_nodes_ptr + b)
    base = probs_ptr + pid.to(tl.int64) * V
    total = tl.zeros((), dtype=tl.float64)
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        total += tl.sum(tl.load(base + offs, mask=offs < V, other=0.0).to(tl.float64), axis=0)
    u = tl.load(uniforms_ptr + pid * 2 + 1).to(tl.float64)
    thr = u * total
    running = tl.zeros((), dtype=tl.float64)
    pick = V  # "not found yet"
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        x = tl.load(base + offs, mask=offs < V, other=0.0).to(tl.float64)
        c = running + tl.cumsum(x, axis=0)
        first = tl.min(tl.where((c > thr) & (offs < V), offs, V), axis=0)
        pick = tl.minimum(pick, first)
        running += tl.sum(x, axis=0)
    pick = tl.minimum(pick, V - 1)  # rounding at the very top of the CDF: last token, as the reference
    tl.store(out_ptr + pid, tl.where(row <= n, pick, -1).to(tl.int32))


def tree_sample_match_verify(probs: torch.Tensor, uniforms: torch.Tensor, tokens: torch.Tensor,
                             parents: torch.Tensor, num_nodes: torch.Tensor, block_v: int = 1024) -> BatchVerifyResult:
    """probs [B, W+1, V] processed target distribution; uniforms float64 [B, W+1, 2]."""
    b, w, v = check_batch(probs, tokens, parents, num_nodes)
    if uniforms.shape != (b, w + 1, 2):
        raise ValueError(f"uniforms must be [B, W+1, 2] = [{b}, {w + 1}, 2], got {tuple(uniforms.shape)}")
    probs = probs.contiguous()
    uniforms = uniforms.to(torch.float64).contiguous()
    draws = torch.full((b, w + 1), -7, dtype=torch.int32, device=probs.device)
    acc, num, toks = alloc_outputs(b, w, probs.device)
    if b == 0:
        return BatchVerifyResult(acc, num, toks)
    row_sample_kernel[(b * (w + 1),)](probs, uniforms, num_nodes, draws, w + 1, v, BLOCK_V=min(block_v, next_pow2(v)))
    block = max(next_pow2(w + 1), 2)
    accept_kernel[(b,)](tokens, parents, num_nodes, draws, acc, num, toks, w, BLOCK=block, MAX_DEPTH=max(w, 1))
    return BatchVerifyResult(acc, num, toks)
