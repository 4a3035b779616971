"""Token Recycling (Luo et al., "Turning Trash into Treasure", arXiv 2408.08696).

State: an adjacency matrix A[V, k] (int32): row t holds k candidate successors of token t, taken
from the target's own top-k the last time it ran at a node whose token was t. Every verified node
updates its row, including nodes on rejected branches (the "trash" the method recycles). The
table is shared across requests (hot start); per-tenant tables are optional.

Drafting fills a static tree template from the root token:
tok(node) = A[tok(parent(node)), rank(node)], where rank is the node's last child index in the
template. Unknown rows (-1: never seen) and duplicate sibling tokens drop the node and its
subtree (siblings must be distinct for sample-and-match). Where the engine verifies chains only,
the draft is the template's most likely path, the rank-0 spine, followed up to the budget
without building the rest of the tree (drafting runs inside the engine step for every request).

Without the target's top-k (an engine hook that only exposes committed tokens, such as vLLM's
chain `custom_class` path), the table can only learn from the committed stream: option
`learn_from_output` inserts each committed successor at rank 0 of its predecessor's row
(move-to-front). That is a successor cache, weaker than the paper's recycling; it is labelled as
such in docs/replay.md and used only where top-k is unavailable.
"""

from __future__ import annotations

import heapq
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from specplug.proposers.base import Budget, Proposer, ProposerOptions, ReqState, VerifyInfo
from specplug.tree import PAD_TOKEN, DraftTree

# Nodes per level of the paper's default template: 80 nodes, depth 6.
DEFAULT_LEVEL_SIZES = (8, 21, 25, 15, 8, 3)


def default_template(k: int = 8, level_sizes=DEFAULT_LEVEL_SIZES, decay: float = 1.5) -> list[tuple[int, ...]]:
    """A static template as child-rank paths, built level by level: among the children of the
    previous level's nodes, keep the ones with the highest prior Π 1/(rank+1)^decay. This front-loads
    rank-0 children as the paper's template does; deeper levels extend the most likely branches."""
    paths: list[tuple[int, ...]] = []
    frontier = [()]
    for size in level_sizes:
        cands = [p + (r,) for p in frontier for r in range(k)]
        prior = lambda path: float(np.prod([1.0 / (r + 1) ** decay for r in path]))  # noqa: E731
        cands.sort(key=lambda c: (-prior(c), c))
        frontier = sorted(cands[:size])
        paths.extend(frontier)
    return paths


class RecyclingOptions(ProposerOptions):
    k: int = Field(8, ge=1, le=64, description="candidates kept per token (columns of the adjacency matrix)")
    vocab_size: int | None = Field(None, ge=1, description="rows of the matrix; None grows it on demand")
    template: Literal["default"] | list[list[int]] = Field("default", description="'default' (80 nodes, depth 6) or child-rank paths")
    tenant_isolation: bool = Field(False, description="one adjacency matrix per tenant key")
    learn_from_output: bool = Field(True, description="without target top-k, learn successors from committed tokens")

    @field_validator("template")
    @classmethod
    def _paths_valid(cls, v):
        if isinstance(v, list):
            seen = set()
            for i, p in enumerate(v):
                if not p or any(r < 0 for r in p):
                    raise ValueError(f"path {i} must be a non-empty list of ranks >= 0")
                if len(p) > 1 and tuple(p[:-1]) not in seen:
                    raise ValueError(f"path {i} {p}: its parent {p[:-1]} must come earlier")
                seen.add(tuple(p))
        return v


class RecyclingProposer(Proposer):
    name = "recycling"
    Options = RecyclingOptions
    needs_topk = True

    def __init__(self, options: RecyclingOptions, num_speculative_tokens: int):
        super().__init__(options, num_speculative_tokens)
        paths = default_template(options.k) if options.template == "default" else [tuple(p) for p in options.template]
        if any(max(p) >= options.k for p in paths):
            raise ValueError(f"recycling.template: ranks must be < k={options.k}")
        self.paths = paths
        index = {p: i for i, p in enumerate(paths)}
        self.parent_of = np.array([index[p[:-1]] if len(p) > 1 else -1 for p in paths], np.int64)
        self.rank_of = np.array([p[-1] for p in paths], np.int64)
        self.prior = np.array([np.prod([1.0 / (r + 1) for r in p]) for p in paths], np.float32)
        self._children: dict[int, list[int]] = {}  # template node (-1: root) -> its children
        for i, parent in enumerate(self.parent_of.tolist()):
            self._children.setdefault(parent, []).append(i)
        self._tables: dict[object, np.ndarray] = {}
        self._tenant: dict[str, object] = {}

    # ------------------------------------------------------------------ table
    def _table(self, tenant, need_rows: int = 0) -> np.ndarray:
        key = tenant if self.options.tenant_isolation else None
        a = self._tables.get(key)
        rows = max(need_rows, self.options.vocab_size or 0, 1)
        if a is None:
            a = np.full((rows, self.options.k), -1, np.int32)
        elif a.shape[0] < need_rows:
            if self.options.vocab_size:
                raise ValueError(f"recycling.vocab_size: token {need_rows - 1} is outside vocab_size={self.options.vocab_size}")
            grown = np.full((max(need_rows, 2 * a.shape[0]), self.options.k), -1, np.int32)
            grown[: a.shape[0]] = a
            a = grown
        self._tables[key] = a
        return a

    def table(self, tenant=None) -> np.ndarray:
        return self._table(self._tenant.get(tenant, tenant))

    # ------------------------------------------------------------------ lifecycle
    def start(self, req_id: str, prompt_ids, tenant: str | None = None) -> None:
        self._tenant[req_id] = tenant

    def stop(self, req_id: str) -> None:
        self._tenant.pop(req_id, None)

    def observe(self, req_id: str, accepted_ids, info: VerifyInfo | None = None) -> None:
        tenant = self._tenant.get(req_id)
        if info is not None and info.topk_tokens is not None:
            self._recycle(tenant, info)
        elif self.options.learn_from_output and info is not None and info.root_token is not None:
            stream = [int(info.root_token)] + [int(t) for t in accepted_ids]
            a = self._table(tenant, max(stream) + 1)
            for prev, nxt in zip(stream, stream[1:]):
                if a[prev, 0] == nxt:
                    continue  # already the top successor (loops and repeats: the common case)
                row = [t for t in a[prev].tolist() if t != nxt and t != -1]
                a[prev] = ([nxt] + row + [-1] * self.options.k)[: self.options.k]

    def _recycle(self, tenant, info: VerifyInfo) -> None:
        """A[token at row r] = target top-k at row r, for every verified row (last write wins)."""
        tree, topk = info.tree, np.asarray(info.topk_tokens)
        row_tokens = [info.root_token] + [int(t) for t in tree.tokens]
        a = self._table(tenant, max([t for t in row_tokens if t is not None and t >= 0] + [int(topk.max(initial=0))]) + 1)
        k = self.options.k
        for r, tok in enumerate(row_tokens):
            if tok is None or tok == PAD_TOKEN or r >= topk.shape[0] or topk[r][0] < 0:
                continue  # unknown row (replay knows only the accepted path's rows)
            cand = topk[r][:k]
            a[tok, : len(cand)] = cand
            a[tok, len(cand):] = -1

    # ------------------------------------------------------------------ drafting
    def propose(self, batch: list[ReqState], budget: list[Budget]) -> list[DraftTree]:
        out = []
        for r, b in zip(batch, budget):
            cap = min(b.max_nodes, self.num_speculative_tokens)
            root = int(r.token_ids[-1]) if len(r.token_ids) else -1
            tenant = self._tenant.get(r.req_id, r.tenant)
            a = self._table(tenant)
            if cap <= 0 or root < 0 or root >= a.shape[0]:
                out.append(DraftTree.empty())
                continue
            out.append(self._fill(a, root, cap) if b.tree else self._chain(a, root, cap))
        return out

    def _chain(self, a: np.ndarray, root: int, cap: int) -> DraftTree:
        """The rank-0 spine: each token's most likely successor in turn, up to ``cap`` tokens."""
        tokens, t = [], root
        while len(tokens) < cap and t < a.shape[0]:
            t = int(a[t, 0])
            if t < 0:
                break
            tokens.append(t)
        return DraftTree.chain(tokens, scores=np.ones(len(tokens), np.float32))

    def _fill(self, a: np.ndarray, root: int, cap: int) -> DraftTree:
        """The template filled from ``a``, pruned to ``cap`` nodes best-first by prior.

        Only the kept nodes are looked up: template nodes are visited in (prior, template order),
        the order in which DraftTree.prune would keep them, and a node whose row is unknown or
        whose token repeats an earlier kept sibling is dropped with its subtree. Siblings have
        distinct priors (decreasing in rank), so the earlier sibling is always decided first.
        """
        n = len(self.paths)
        tok = np.full(n, -1, np.int64)
        kept = np.zeros(n, bool)
        sibling_tokens: dict[int, set] = {}
        heap = [(-float(self.prior[i]), int(i)) for i in self._children[-1]]
        heapq.heapify(heap)
        num_kept = 0
        while heap and num_kept < cap:
            _, i = heapq.heappop(heap)
            p = int(self.parent_of[i])
            parent_tok = root if p < 0 else int(tok[p])
            if parent_tok >= a.shape[0]:
                continue
            t = int(a[parent_tok, self.rank_of[i]])
            siblings = sibling_tokens.setdefault(p, set())
            if t < 0 or t in siblings:
                continue
            siblings.add(t)
            tok[i], kept[i] = t, True
            num_kept += 1
            for c in self._children.get(i, ()):
                heapq.heappush(heap, (-float(self.prior[c]), int(c)))
        idx = np.flatnonzero(kept)
        remap = -np.ones(n, np.int64)
        remap[idx] = np.arange(idx.size)
        parents = np.where(self.parent_of[idx] >= 0, remap[np.maximum(self.parent_of[idx], 0)], -1)
        # score: prior of the path (rank-based); best path = the rank-0 chain when it exists
        return DraftTree(tok[idx], parents, scores=self.prior[idx])
