"""Batched tree greedy verification (Triton).

Reference: specplug.verify.greedy_verify / greedy_verify_batch. Two launches:
1. row_argmax: one program per (request, row) reduces its logits row over V in blocks
   (ties -> lowest token id, as torch.argmax);
2. accept: one program per request marks nodes whose token equals the argmax of their parent's
   row, keeps the deepest node whose whole path matches, and writes the path + bonus token.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from specplug.kernels._launch import alloc_outputs, check_batch, next_pow2
from specplug.kernels._tree_walk import accept_path
from specplug.verify import BatchVerifyResult


@triton.jit
def row_argmax_kernel(logits_ptr, num_nodes_ptr, out_ptr, W1, V, BLOCK_V: tl.constexpr):
    pid = tl.program_id(0)
    b = pid // W1
    row = pid % W1
    n = tl.load(num_nodes_ptr + b)
    base = logits_ptr + pid.to(tl.int64) * V
    best_val = -float("inf")
    best_idx = 0
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        x = tl.load(base + offs, mask=offs < V, other=-float("inf")).to(tl.float32)
        m = tl.max(x, axis=0)
        i = tl.argmax(x, axis=0, tie_break_left=True) + start
        take = m > best_val  # strict: an equal max in a later block keeps the earlier index
        best_idx = tl.where(take, i, best_idx)
        best_val = tl.where(take, m, best_val)
    tl.store(out_ptr + pid, tl.where(row <= n, best_idx, -1))


@triton.jit
def accept_kernel(tokens_ptr, parents_ptr, num_nodes_ptr, target_ptr, acc_ptr, num_ptr, out_tok_ptr,
                  W, BLOCK: tl.constexpr, MAX_DEPTH: tl.constexpr):
    b = tl.program_id(0)
    n = tl.load(num_nodes_ptr + b)
    accept_path(tokens_ptr + b * W, parents_ptr + b * W, target_ptr + b * (W + 1), n,
                acc_ptr + b * W, num_ptr + b, out_tok_ptr + b * (W + 1), W, BLOCK, MAX_DEPTH)


def tree_greedy_verify(logits: torch.Tensor, tokens: torch.Tensor, parents: torch.Tensor,
                       num_nodes: torch.Tensor, block_v: int = 1024) -> BatchVerifyResult:
    """logits [B, W+1, V] (row 0 root, row i+1 node i); tokens, parents int32 [B, W]; num_nodes [B]."""
    b, w, v = check_batch(logits, tokens, parents, num_nodes)
    logits = logits.contiguous()
    argmax = torch.full((b, w + 1), -7, dtype=torch.int32, device=logits.device)
    acc, num, toks = alloc_outputs(b, w, logits.device)
    if b == 0:
        return BatchVerifyResult(acc, num, toks)
    row_argmax_kernel[(b * (w + 1),)](logits, num_nodes, argmax, w + 1, v, BLOCK_V=min(block_v, next_pow2(v)))
    block = max(next_pow2(w + 1), 2)
    accept_kernel[(b,)](tokens, parents, num_nodes, argmax, acc, num, toks, w, BLOCK=block, MAX_DEPTH=max(w, 1))
    return BatchVerifyResult(acc, num, toks)
