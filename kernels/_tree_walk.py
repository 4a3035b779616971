"""Device functions shared by the tree kernels (triton.jit, inlined into each kernel).

A request's tree is held as vectors over node slots i in [0, BLOCK): token[i], parent[i]
(-1 = child of the root). Ancestor sets are computed by pointer jumping: start at i, replace the
current node by its parent W times, marking every node visited. That needs no scratch memory and
no sequential per-node loop, which is what makes the walk vectorisable.
"""

import triton
import triton.language as tl


@triton.jit
def ancestor_tile(parents_row_ptr, n, BLOCK: tl.constexpr, MAX_DEPTH: tl.constexpr):
    """[BLOCK, BLOCK] int1: [i, j] = node j is node i or an ancestor of i (valid i < n only)."""
    rows = tl.arange(0, BLOCK)
    cols = tl.arange(0, BLOCK)
    valid = rows < n
    cur = tl.where(valid, rows, -1)
    anc = (cols[None, :] == cur[:, None]) & valid[:, None]
    for _ in range(MAX_DEPTH):
        live = cur >= 0
        cur = tl.load(parents_row_ptr + cur, mask=live, other=-1)
        cur = tl.where(live, cur, -1)
        anc = anc | ((cols[None, :] == cur[:, None]) & (cur[:, None] >= 0))
    return anc


@triton.jit
def accept_path(tokens_row_ptr, parents_row_ptr, target_row_ptr, n,
                acc_ptr, num_ptr, out_tok_ptr, W, BLOCK: tl.constexpr, MAX_DEPTH: tl.constexpr):
    """Given the target token chosen at every row (row 0 = root, row i+1 = node i), accept the
    deepest node whose whole path matches, write the path, the bonus token and the count."""
    idx = tl.arange(0, BLOCK)
    valid = idx < n
    tok = tl.load(tokens_row_ptr + idx, mask=valid, other=-1)
    par = tl.load(parents_row_ptr + idx, mask=valid, other=-1)
    # the token the target chose at this node's parent row
    want = tl.load(target_row_ptr + par + 1, mask=valid, other=-2)
    match = valid & (tok == want) & (tok != -1)
    anc = ancestor_tile(parents_row_ptr, n, BLOCK, MAX_DEPTH)
    depth = tl.sum(anc.to(tl.int32), axis=1)
    # ok: every node on the path (ancestors and self) matches
    bad = tl.sum((anc & (match[None, :] == 0)).to(tl.int32), axis=1)
    ok = valid & (bad == 0)
    score = tl.where(ok, depth, 0)
    L = tl.max(score, axis=0)
    best = tl.argmax(score, axis=0)  # unique deepest ok node (siblings are distinct)
    on_path = tl.sum(tl.where(idx[:, None] == best, anc.to(tl.int32), 0), axis=0) > 0  # row `best`
    on_path = on_path & (L > 0)
    # node at path position d (0-based) is the on-path node of depth d+1
    sel = on_path[None, :] & (depth[None, :] == (idx[:, None] + 1))
    node_at = tl.sum(tl.where(sel, idx[None, :], 0), axis=1)
    tok_at = tl.sum(tl.where(sel, tok[None, :], 0), axis=1)
    has = idx < L
    tl.store(acc_ptr + idx, tl.where(has, node_at, -1), mask=idx < W)
    bonus_row = tl.where(L > 0, best + 1, 0)
    bonus = tl.load(target_row_ptr + bonus_row)
    out = tl.where(has, tok_at, tl.where(idx == L, bonus, -1))
    tl.store(out_tok_ptr + idx, out, mask=idx < W + 1)
    tl.store(num_ptr, L)
