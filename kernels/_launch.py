"""Shared host-side helpers: input checks, padded tensors from DraftTrees, block sizes."""

from __future__ import annotations

import torch

from specplug.tree import DraftTree, TreeBatch


def next_pow2(x: int) -> int:
    return 1 << max(int(x) - 1, 0).bit_length()


def tree_tensors(trees: list[DraftTree], width: int | None = None, device="cpu"):
    """(tokens int32[B,W], parents int32[B,W], num_nodes int32[B]) padded with -1."""
    tb = TreeBatch.from_trees(trees, width)
    t = lambda a: torch.as_tensor(a, dtype=torch.int32, device=device).contiguous()  # noqa: E731
    return t(tb.tokens), t(tb.parents), t(tb.num_nodes)


def check_batch(rows: torch.Tensor, tokens: torch.Tensor, parents: torch.Tensor, num_nodes: torch.Tensor) -> tuple[int, int, int]:
    if rows.ndim != 3:
        raise ValueError(f"rows must be [B, W+1, V], got {tuple(rows.shape)}")
    b, w1, v = rows.shape
    if tokens.shape != (b, w1 - 1) or parents.shape != (b, w1 - 1) or num_nodes.shape != (b,):
        raise ValueError(f"tokens/parents must be [B, W] = [{b}, {w1 - 1}] and num_nodes [B]; got "
                         f"{tuple(tokens.shape)}, {tuple(parents.shape)}, {tuple(num_nodes.shape)}")
    return b, w1 - 1, v


def alloc_outputs(b: int, w: int, device):
    """Outputs filled with a poison value: every element must be written by the kernel."""
    acc = torch.full((b, w), -7, dtype=torch.int32, device=device)
    num = torch.full((b,), -7, dtype=torch.int32, device=device)
    toks = torch.full((b, w + 1), -7, dtype=torch.int32, device=device)
    return acc, num, toks
