"""The kernels' algorithms vectorised in plain torch (no Python loop over requests): the fair
"fast torch" baseline for the benchmark, and a second check of the algorithm itself."""

from __future__ import annotations

import torch

from specplug.verify import BatchVerifyResult


def ancestor_masks(parents: torch.Tensor, num_nodes: torch.Tensor) -> torch.Tensor:
    """bool [B, W, W]: [b, i, j] = j is i or an ancestor of i (valid i only), by pointer jumping."""
    b, w = parents.shape
    idx = torch.arange(w, device=parents.device)
    valid = idx[None, :] < num_nodes[:, None]
    cur = torch.where(valid, idx[None, :].expand(b, w), torch.full_like(parents, -1)).long()
    anc = (idx[None, None, :] == cur[:, :, None]) & valid[:, :, None]
    par = parents.long()
    for _ in range(w):
        live = cur >= 0
        cur = torch.where(live, torch.gather(par, 1, cur.clamp(min=0)), torch.full_like(cur, -1))
        anc |= (idx[None, None, :] == cur[:, :, None]) & (cur[:, :, None] >= 0)
    return anc


def accept_paths(target: torch.Tensor, tokens: torch.Tensor, parents: torch.Tensor, num_nodes: torch.Tensor) -> BatchVerifyResult:
    """target [B, W+1]: the token chosen at each row (argmax or draw)."""
    b, w = tokens.shape
    idx = torch.arange(w, device=tokens.device)
    valid = idx[None, :] < num_nodes[:, None]
    want = torch.gather(target.long(), 1, (parents.long() + 1).clamp(min=0))
    match = valid & (tokens.long() == want) & (tokens != -1)
    anc = ancestor_masks(parents, num_nodes)
    depth = anc.sum(-1)
    ok = valid & ~(anc & ~match[:, None, :]).any(-1)
    score = torch.where(ok, depth, torch.zeros_like(depth))
    L, best = score.max(-1) if w else (torch.zeros(b, dtype=torch.long), torch.zeros(b, dtype=torch.long))
    on_path = anc[torch.arange(b), best] & (L[:, None] > 0) if w else torch.zeros(b, 0, dtype=torch.bool)
    pos = torch.arange(w + 1, device=tokens.device)
    sel = on_path[:, None, :] & (depth[:, None, :] == (pos[None, :, None] + 1))  # [B, W+1, W]
    node_at = (sel * idx[None, None, :]).sum(-1)
    tok_at = (sel * tokens.long()[:, None, :]).sum(-1)
    has = pos[None, :] < L[:, None]
    bonus = torch.gather(target.long(), 1, torch.where(L > 0, best + 1, torch.zeros_like(best))[:, None])
    toks = torch.where(has, tok_at, torch.where(pos[None, :] == L[:, None], bonus, torch.full_like(tok_at, -1)))
    acc = torch.where(has[:, :w], node_at[:, :w], torch.full_like(node_at[:, :w], -1))
    return BatchVerifyResult(acc.int(), L.int(), toks.int())


def greedy_verify(logits, tokens, parents, num_nodes) -> BatchVerifyResult:
    return accept_paths(logits.argmax(-1), tokens, parents, num_nodes)


def sample_match_verify(probs, uniforms, tokens, parents, num_nodes) -> BatchVerifyResult:
    c = torch.cumsum(probs.double(), -1)
    thr = uniforms[..., 1].double() * c[..., -1]
    draws = (c <= thr[..., None]).sum(-1).clamp(max=probs.shape[-1] - 1)  # first index with c > thr
    return accept_paths(draws, tokens, parents, num_nodes)
