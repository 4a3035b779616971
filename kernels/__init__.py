"""Triton kernels for tree verification, installed as ``specplug.kernels``.

Each kernel sits beside its torch reference in ``specplug.verify`` / ``specplug.tree`` and is
tested equal to it (CI runs them on CPU with TRITON_INTERPRET=1). Importing this package does not
import triton; the kernels load on first use.

- tree_greedy_verify      == specplug.verify.greedy_verify_batch
- tree_sample_match_verify == specplug.verify.sample_and_match_batch
- tree_layout             == DraftTree.ancestor_mask / depths / position_ids
- kv_compact              == kv_compact.kv_compact_reference (accepted path's KV into chain slots)
- torch_batched.*         the same algorithms vectorised in torch (the fair "fast torch" baseline)
"""

from __future__ import annotations


def tree_greedy_verify(*args, **kwargs):
    from specplug.kernels.tree_greedy import tree_greedy_verify as fn

    return fn(*args, **kwargs)


def tree_sample_match_verify(*args, **kwargs):
    from specplug.kernels.tree_sample_match import tree_sample_match_verify as fn

    return fn(*args, **kwargs)


def tree_layout(*args, **kwargs):
    from specplug.kernels.tree_layout import tree_layout as fn

    return fn(*args, **kwargs)


def kv_compact(*args, **kwargs):
    from specplug.kernels.kv_compact import kv_compact as fn

    return fn(*args, **kwargs)


__all__ = ["tree_greedy_verify", "tree_sample_match_verify", "tree_layout", "kv_compact"]
