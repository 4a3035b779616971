"""Reference tree verifiers (torch, readable, per request). They are the specification that the
Triton kernels and the engine adapters are tested against. docs/verification.md explains why each
rule is lossless.

Inputs per request:
- a DraftTree with n nodes;
- ``rows``: float tensor [n+1, V]. For greedy, logits; for sampling, the *processed* target
  distribution p (after temperature/top-k/top-p, see ``target_probs``). Row 0 is the root's
  next-token distribution, row i+1 is node i's (given the path to node i).
- ``uniforms``: float tensor [n+1, 2] of U[0,1) draws. Column 1 of row r samples from the
  distribution at row r (inverse CDF); column 0 of row i+1 is node i's acceptance draw in
  rejection sampling. Passing the randomness in (instead of a generator) makes every verifier
  a deterministic function, so kernels can be checked against it token for token.

Output per request: the accepted node indices (root-to-leaf order) and the emitted tokens:
the accepted nodes' tokens followed by one bonus/correction token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from specplug.tree import PAD_TOKEN, DraftTree


@dataclass
class VerifyResult:
    accepted_nodes: list[int]
    tokens: list[int]  # accepted nodes' tokens + the bonus/correction token

    @property
    def num_accepted(self) -> int:
        return len(self.accepted_nodes)


# ---------------------------------------------------------------------- sampling helpers
def target_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Processed target distribution per row: softmax(logits / T) restricted to top-k and top-p.

    top_k <= 0 and top_p >= 1 disable the filters. Ties at the top-k boundary keep every token
    whose logit equals the k-th largest (like a threshold), so the result is order-independent.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for sampling, got {temperature} (use greedy_verify)")
    x = logits.float() / temperature
    if top_k and top_k > 0 and top_k < x.shape[-1]:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    p = torch.softmax(x, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = torch.sort(p, dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the token crossing it is kept)
        cum_before = torch.cumsum(sorted_p, dim=-1) - sorted_p
        keep_sorted = cum_before < top_p
        keep = torch.zeros_like(keep_sorted).scatter(-1, idx, keep_sorted)
        p = torch.where(keep, p, torch.zeros_like(p))
        p = p / p.sum(dim=-1, keepdim=True)
    return p


def sample_from(p: torch.Tensor, u: float) -> int:
    """Inverse-CDF sample of the (unnormalised, non-negative) vector ``p`` with one uniform ``u``.

    Returns the first index whose cumulative mass exceeds u * total; zero-mass entries are
    never returned.
    """
    # numpy: this runs once per visited node in the reference loop, where torch op overhead dominates
    c = np.cumsum(p.detach().cpu().double().numpy())
    total = c[-1]
    if not total > 0:
        raise ValueError("cannot sample from a distribution with zero total mass")
    idx = int(np.searchsorted(c, u * total, side="right"))
    return min(idx, c.size - 1)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)): what rejection sampling draws from after a rejection."""
    r = torch.clamp(p - q, min=0)
    s = r.sum()
    # p == q (up to rounding) means a rejection had probability 0; keep p rather than divide by 0.
    return p if s <= 0 else r / s


def _children_by_token(tree: DraftTree, node: int) -> dict[int, int]:
    return {int(tree.tokens[c]): int(c) for c in tree.children(node) if tree.tokens[c] != PAD_TOKEN}


def _check_rows(tree: DraftTree, rows: torch.Tensor) -> None:
    if rows.ndim != 2 or rows.shape[0] < tree.num_nodes + 1:
        raise ValueError(f"need [n+1, V] rows for a tree of {tree.num_nodes} nodes, got {tuple(rows.shape)}")


# ---------------------------------------------------------------------- verifiers
def _walk(tree: DraftTree, choose) -> VerifyResult:
    """From the root: y = choose(row of the current node); descend into the child holding y,
    else emit y and stop. Greedy and sample-and-match differ only in ``choose``."""
    node, accepted = -1, []
    while True:
        y = choose(node + 1)
        child = _children_by_token(tree, node).get(y)
        if child is None:
            return VerifyResult(accepted, [int(tree.tokens[a]) for a in accepted] + [y])
        accepted.append(child)
        node = child


def greedy_verify(tree: DraftTree, logits: torch.Tensor) -> VerifyResult:
    """Accept the longest root-to-leaf path whose tokens equal the target argmax at each step,
    then append the argmax after the last accepted node (the bonus token).

    With distinct siblings the path is unique: at each node at most one child holds the argmax.
    Ties in argmax resolve to the lowest token id (torch.argmax), as in plain decoding.
    """
    _check_rows(tree, logits)
    argmax = torch.argmax(logits, dim=-1).tolist()
    return _walk(tree, lambda row: argmax[row])


def sample_and_match(tree: DraftTree, probs: torch.Tensor, uniforms: torch.Tensor) -> VerifyResult:
    """Deterministic trees (suffix, recycling, retrieval, argmax drafters, diffusion drafters).

    At the current node draw y ~ p(.|path); descend into the child holding y, else emit y and
    stop. Every emitted token is an exact draw from the target conditional, whatever the tree.
    """
    _check_rows(tree, probs)
    return _walk(tree, lambda row: sample_from(probs[row], float(uniforms[row, 1])))


def recursive_rejection(tree: DraftTree, probs: torch.Tensor, uniforms: torch.Tensor) -> VerifyResult:
    """Stochastic trees: children of a node were drawn from q (``tree.draft_probs`` of the
    children) without replacement, in index order (SpecInfer / RSD).

    For each child x_j in draw order: accept with min(1, p(x_j)/q(x_j)); on rejection
    p <- norm(max(0, p - q)) and q <- q with x_j removed, renormalised. If every child is
    rejected (or there is none), emit a draw from the current p. A chain is the one-child case,
    which is exactly Leviathan/Chen rejection sampling.
    """
    if tree.deterministic or tree.draft_probs is None:
        raise ValueError("recursive_rejection needs a stochastic tree with draft_probs; "
                         "use sample_and_match for deterministic trees")
    _check_rows(tree, probs)
    q_all = torch.as_tensor(tree.draft_probs, dtype=torch.float64)
    node, accepted = -1, []
    while True:
        p = probs[node + 1].double()
        kids = [int(c) for c in tree.children(node) if tree.tokens[c] != PAD_TOKEN]
        q = q_all[kids[0]].clone() if kids else None
        nxt = None
        for c in kids:
            x = int(tree.tokens[c])
            if float(uniforms[c + 1, 0]) * float(q[x]) < float(p[x]):
                nxt = c
                break
            p = residual(p, q)
            q[x] = 0.0
            s = q.sum()
            if s <= 0:
                break
            q = q / s
        if nxt is None:
            y = sample_from(p, float(uniforms[node + 1, 1]))
            return VerifyResult(accepted, [int(tree.tokens[a]) for a in accepted] + [y])
        accepted.append(nxt)
        node = nxt


def chain_rejection(tree: DraftTree, probs: torch.Tensor, uniforms: torch.Tensor) -> VerifyResult:
    """Leviathan et al. 2023 / Chen et al. 2023 for a chain drafted from a real q."""
    if tree.num_nodes and not np.array_equal(tree.parents, np.arange(tree.num_nodes) - 1):
        raise ValueError("chain_rejection needs a chain (parents[i] == i-1)")
    return recursive_rejection(tree, probs, uniforms)


def verify(tree: DraftTree, logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0,
           top_p: float = 1.0, generator: torch.Generator | None = None) -> VerifyResult:
    """Pick the right rule for the tree and sampling parameters.

    temperature 0: greedy. Otherwise sample-and-match for deterministic trees, recursive
    rejection for stochastic ones. Frequency scores are never used as q.
    """
    if temperature <= 0:
        return greedy_verify(tree, logits)
    probs = target_probs(logits, temperature, top_k, top_p)
    uniforms = torch.rand((tree.num_nodes + 1, 2), generator=generator, dtype=torch.float64)
    if tree.deterministic:
        return sample_and_match(tree, probs, uniforms)
    return recursive_rejection(tree, probs, uniforms)


# ---------------------------------------------------------------------- batch helpers
@dataclass
class BatchVerifyResult:
    """Padded batch results (what kernels return).

    accepted_nodes: int32[B, W] (-1 padded); num_accepted: int32[B];
    tokens: int32[B, W+1] accepted tokens then the bonus (-1 padded).
    """

    accepted_nodes: torch.Tensor
    num_accepted: torch.Tensor
    tokens: torch.Tensor

    @classmethod
    def from_results(cls, results: list[VerifyResult], width: int) -> "BatchVerifyResult":
        b = len(results)
        acc = torch.full((b, width), -1, dtype=torch.int32)
        num = torch.zeros(b, dtype=torch.int32)
        toks = torch.full((b, width + 1), -1, dtype=torch.int32)
        for i, r in enumerate(results):
            acc[i, : r.num_accepted] = torch.tensor(r.accepted_nodes, dtype=torch.int32)
            num[i] = r.num_accepted
            toks[i, : len(r.tokens)] = torch.tensor(r.tokens, dtype=torch.int32)
        return cls(acc, num, toks)


def greedy_verify_batch(trees: list[DraftTree], logits: torch.Tensor) -> BatchVerifyResult:
    """logits: [B, W+1, V] padded (rows past a tree's n+1 are ignored)."""
    width = logits.shape[1] - 1
    return BatchVerifyResult.from_results([greedy_verify(t, logits[i]) for i, t in enumerate(trees)], width)


def sample_and_match_batch(trees: list[DraftTree], probs: torch.Tensor, uniforms: torch.Tensor) -> BatchVerifyResult:
    """probs: [B, W+1, V]; uniforms: [B, W+1, 2]."""
    width = probs.shape[1] - 1
    return BatchVerifyResult.from_results(
        [sample_and_match(t, probs[i], uniforms[i]) for i, t in enumerate(trees)], width
    )
