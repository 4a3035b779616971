"""DraftTree: the one intermediate representation every proposer emits and every verifier reads.

Conventions (shared with docs/verification.md):
- The *root* is the last committed token (or the pending bonus token). It is not a node of the
  tree; nodes are 0..n-1 and ``parents[i] == -1`` means "child of the root".
- ``parents[i] < i`` always (topological order), so a single forward pass over the nodes sees
  every parent before its children.
- ``prefix_len`` counts the tokens *before* the root. The root sits at position ``prefix_len``,
  a node at depth d (root children have depth 1) at position ``prefix_len + d``.
- Verifier rows: row 0 is the root's output distribution, row i+1 is node i's.
- ``PAD_TOKEN`` (-1) marks padding nodes; a padded node is never accepted by any verifier
  because no sampled token equals -1.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np

PAD_TOKEN = -1
_INT32 = np.iinfo(np.int32)


def _as_int32(x, name: str) -> np.ndarray:
    if isinstance(x, np.ndarray) and x.dtype == np.int32:
        return x.reshape(-1)
    arr = np.asarray(x, dtype=np.int64).reshape(-1)
    if arr.size and (arr.min() < _INT32.min or arr.max() > _INT32.max):
        raise ValueError(f"{name} does not fit in int32")
    return arr.astype(np.int32)


def best_first(parents: list[int], scores: list[float], budget: int) -> list[int]:
    """Indices (ascending) of at most ``budget`` nodes taken best-first by score (ties: lower
    index), never a node without its parent. Plain lists: these trees have tens of nodes, where
    a numpy call per node costs more than the work."""
    kids: dict[int, list[int]] = {}
    for i, p in enumerate(parents):
        kids.setdefault(p, []).append(i)
    heap = [(-scores[c], c) for c in kids.get(-1, ())]
    heapq.heapify(heap)
    kept: list[int] = []
    while heap and len(kept) < budget:
        _, node = heapq.heappop(heap)
        kept.append(node)
        for c in kids.get(node, ()):
            heapq.heappush(heap, (-scores[c], c))
    kept.sort()
    return kept


def best_scored_path(parents: list[int], scores: list[float], nodes=None) -> list[int]:
    """Node indices (root's child first) of the path to the node with the largest sum of scores
    along it (ties: the deeper, then the lower index), over ``nodes`` (ascending and closed under
    parents; default every node)."""
    acc: dict[int, float] = {}
    depth: dict[int, int] = {}
    best = -1
    for i in range(len(parents)) if nodes is None else nodes:
        p = parents[i]
        acc[i] = scores[i] + (acc[p] if p >= 0 else 0.0)
        depth[i] = depth[p] + 1 if p >= 0 else 1
        if best < 0 or (acc[i], depth[i]) > (acc[best], depth[best]):
            best = i
    path = []
    while best >= 0:
        path.append(best)
        best = parents[best]
    return path[::-1]


def graft_into(tokens: list[int], parents: list[int], scores: list[float] | None,
               other_tokens: list[int], other_parents: list[int], other_scores: list[float] | None,
               drop=None) -> None:
    """Merge the other tree's nodes into (tokens, parents, scores), in place, by longest-prefix
    matching: a node matching an existing child (same token under the matched parent) keeps the
    larger score, else it is grafted as a new branch. ``drop[j]`` true drops node j, and a node
    whose parent was dropped goes too. ``scores`` None: the merged tree has no scores (the other
    tree's are ignored); ``other_scores`` None counts as zeros."""
    at = {(p, t): i for i, (p, t) in enumerate(zip(parents, tokens))}
    remap = [-1] * len(other_tokens)
    for j, t in enumerate(other_tokens):
        p = other_parents[j]
        if (drop is not None and drop[j]) or (p >= 0 and remap[p] < 0):
            continue
        key = (remap[p] if p >= 0 else -1, t)
        s = 0.0 if other_scores is None else other_scores[j]
        i = at.get(key)
        if i is None:
            i = at[key] = len(tokens)
            tokens.append(t)
            parents.append(key[0])
            if scores is not None:
                scores.append(s)
        elif scores is not None and s > scores[i]:
            scores[i] = s
        remap[j] = i


@dataclass(eq=False)
class DraftTree:
    """A draft token tree below a root token.

    tokens:       int32[n] draft token ids (PAD_TOKEN for padding nodes).
    parents:      int32[n], -1 = child of the root, else an index < i.
    draft_probs:  float32[n, V] or None. Row i is the draft distribution q that node i's token
                  was *sampled* from (q at the parent's context); siblings share the same row.
                  Only meaningful when ``deterministic`` is False.
    deterministic: True when node tokens were chosen (argmax, retrieval, frequency, lookup)
                  rather than sampled; such trees are verified by sample-and-match.
    scores:       float32[n] or None: proposer's confidence (e.g. path probability). Used to
                  pick the best single path and to prune to a budget; never used as q.
    """

    tokens: np.ndarray
    parents: np.ndarray
    draft_probs: np.ndarray | None = None
    deterministic: bool = True
    scores: np.ndarray | None = None
    _depths: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.tokens = _as_int32(self.tokens, "tokens")
        self.parents = _as_int32(self.parents, "parents")
        if self.tokens.shape != self.parents.shape:
            raise ValueError(
                f"tokens has {self.tokens.size} nodes but parents has {self.parents.size}"
            )
        if self.scores is not None:
            self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
            if self.scores.size != self.tokens.size:
                raise ValueError(f"scores has {self.scores.size} entries for {self.tokens.size} nodes")
        if self.draft_probs is not None:
            self.draft_probs = np.asarray(self.draft_probs, dtype=np.float32)
            if self.draft_probs.ndim != 2 or self.draft_probs.shape[0] != self.tokens.size:
                raise ValueError(
                    f"draft_probs must be [n, V] with n={self.tokens.size}, got {self.draft_probs.shape}"
                )
        if not self.deterministic and self.draft_probs is None:
            raise ValueError("a stochastic tree (deterministic=False) needs draft_probs")
        self.validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def _derived(cls, tokens, parents, draft_probs, deterministic, scores) -> "DraftTree":
        """A tree cut from a validated one (a subtree, a path): valid by construction, so the
        checks are skipped; transforms run for every request in every engine step."""
        tree = object.__new__(cls)
        tree.tokens = tokens.astype(np.int32, copy=False)
        tree.parents = parents.astype(np.int32, copy=False)
        tree.draft_probs, tree.deterministic, tree.scores, tree._depths = draft_probs, deterministic, scores, None
        return tree

    @classmethod
    def empty(cls) -> "DraftTree":
        return cls(np.zeros(0, np.int32), np.zeros(0, np.int32))

    @classmethod
    def chain(cls, tokens, scores=None) -> "DraftTree":
        """A single path: node i is the child of node i-1."""
        n = len(tokens)
        return cls(np.asarray(tokens), np.arange(-1, n - 1, dtype=np.int32), scores=scores)

    @classmethod
    def from_paths(cls, paths, path_scores=None) -> "DraftTree":
        """A trie over token paths below the root; shared prefixes merge.

        A node's score is the maximum score of the paths through it (if given).
        """
        tokens: list[int] = []
        parents: list[int] = []
        scores: list[float] = []
        children: dict[tuple[int, int], int] = {}
        for k, path in enumerate(paths):
            s = None if path_scores is None else float(path_scores[k])
            node = -1
            for tok in path:
                key = (node, int(tok))
                nxt = children.get(key)
                if nxt is None:
                    nxt = len(tokens)
                    children[key] = nxt
                    tokens.append(int(tok))
                    parents.append(node)
                    scores.append(-np.inf if s is None else s)
                elif s is not None:
                    scores[nxt] = max(scores[nxt], s)
                node = nxt
        return cls(
            np.asarray(tokens, np.int64),
            np.asarray(parents, np.int64),
            scores=None if path_scores is None else np.asarray(scores, np.float32),
        )

    # ------------------------------------------------------------------ validation
    def validate(self, distinct_siblings: bool | None = None) -> None:
        """Raise ValueError naming the first bad node.

        Sibling tokens must be distinct for deterministic trees (sample-and-match needs it).
        Stochastic trees drawn without replacement have distinct siblings as well.
        """
        n = self.tokens.size
        if n == 0 or (self.parents[0] == -1 and (np.diff(self.parents) == 1).all()):
            return self._validate_probs()  # a chain: parents in order, one child each
        # Checked with numpy (drafting builds trees inside the engine step); the loops below only
        # run to name the first bad node once a check has failed.
        bad = np.flatnonzero((self.parents < -1) | (self.parents >= np.arange(n)))
        if bad.size:
            i, p = int(bad[0]), int(self.parents[bad[0]])
            raise ValueError(
                f"node {i}: parent {p} must be -1 (root) or an earlier node (< {i}); "
                "trees are stored in topological order, so this also rules out cycles"
            )
        if distinct_siblings is None:
            distinct_siblings = True
        real = self.tokens != PAD_TOKEN
        if distinct_siblings and n > 1 and real.sum() > 1:
            keys = self.parents[real].astype(np.int64) * (1 << 32) + (self.tokens[real].astype(np.int64) & 0xFFFFFFFF)
            distinct = np.unique(keys).size == keys.size
        else:
            distinct = True
        if not distinct:
            seen: dict[tuple[int, int], int] = {}
            for i in range(n):
                tok = int(self.tokens[i])
                if tok == PAD_TOKEN:
                    continue
                key = (int(self.parents[i]), tok)
                if key in seen:
                    raise ValueError(
                        f"node {i}: token {tok} duplicates sibling node {seen[key]} "
                        f"(parent {key[0]}); siblings must be distinct"
                    )
                seen[key] = i
        self._validate_probs()

    def _validate_probs(self) -> None:
        n = self.tokens.size
        if self.draft_probs is not None and not self.deterministic:
            for i in range(n):
                j = int(np.flatnonzero(self.parents == self.parents[i])[0])
                if j != i and not np.array_equal(self.draft_probs[i], self.draft_probs[j]):
                    raise ValueError(
                        f"node {i}: draft_probs differs from sibling node {j}; siblings are "
                        "drawn from one distribution q at their parent"
                    )

    # ------------------------------------------------------------------ basic views
    @property
    def num_nodes(self) -> int:
        return int(self.tokens.size)

    def __len__(self) -> int:
        return self.num_nodes

    def depths(self) -> np.ndarray:
        """int32[n]: root children have depth 1."""
        if self._depths is None:
            # parents come first, so one pass per tree level settles every node
            d = np.ones(self.num_nodes, np.int32)
            child = np.flatnonzero(self.parents >= 0)
            while child.size:
                new = d[self.parents[child]] + 1
                moved = new != d[child]
                d[child] = new
                child = child[moved]
            self._depths = d
        return self._depths

    def children(self, node: int) -> np.ndarray:
        """Indices of the children of ``node`` (-1 = root), in index order."""
        return np.flatnonzero(self.parents == node)

    def ancestor_mask(self) -> np.ndarray:
        """bool[n, n]: [i, j] is True iff node j is node i or one of its ancestors."""
        n = self.num_nodes
        m = np.zeros((n, n), dtype=bool)
        for i in range(n):
            p = int(self.parents[i])
            if p >= 0:
                m[i] = m[p]
            m[i, i] = True
        return m

    def attention_mask(self, prefix_len: int) -> np.ndarray:
        """bool[n+1, prefix_len+n+1]: what each verify query may attend to.

        Query row 0 is the root, row i+1 is node i. Key columns are the prefix, then the root,
        then the nodes. Everyone sees the whole prefix and the root; nodes also see their
        ancestors and themselves.
        """
        if prefix_len < 0:
            raise ValueError(f"prefix_len must be >= 0, got {prefix_len}")
        n = self.num_nodes
        mask = np.zeros((n + 1, prefix_len + n + 1), dtype=bool)
        mask[:, : prefix_len + 1] = True
        mask[1:, prefix_len + 1 :] = self.ancestor_mask()
        return mask

    def position_ids(self, prefix_len: int) -> np.ndarray:
        """int32[n+1]: the root at ``prefix_len``, node i at ``prefix_len + depth(i)``."""
        return np.concatenate([[prefix_len], prefix_len + self.depths()]).astype(np.int32)

    def leaves(self) -> np.ndarray:
        has_child = np.zeros(self.num_nodes, dtype=bool)
        has_child[self.parents[self.parents >= 0]] = True
        return np.flatnonzero(~has_child)

    def path_to(self, node: int) -> list[int]:
        """Node indices from the root's child down to ``node``."""
        out = []
        while node >= 0:
            out.append(int(node))
            node = int(self.parents[node])
        return out[::-1]

    def paths(self) -> list[list[int]]:
        """Every root-to-leaf path, as node indices, leaves in index order."""
        return [self.path_to(int(leaf)) for leaf in self.leaves()]

    # ------------------------------------------------------------------ transforms
    def subtree(self, keep) -> "DraftTree":
        """The tree restricted to ``keep`` (node indices); every kept node's ancestors must be kept."""
        keep = np.unique(np.asarray(keep, dtype=np.int64))
        remap = -np.ones(self.num_nodes, np.int64)
        remap[keep] = np.arange(keep.size)
        parents = self.parents[keep].astype(np.int64)
        new_parents = np.where(parents >= 0, remap[np.maximum(parents, 0)], -1)
        orphan = np.flatnonzero((parents >= 0) & (new_parents < 0))
        if orphan.size:
            k = orphan[0]
            raise ValueError(f"node {keep[k]}: kept without its parent {parents[k]}")
        return DraftTree._derived(
            self.tokens[keep],
            new_parents,
            draft_probs=None if self.draft_probs is None else self.draft_probs[keep],
            deterministic=self.deterministic,
            scores=None if self.scores is None else self.scores[keep],
        )

    def prune(self, budget: int) -> "DraftTree":
        """Keep at most ``budget`` nodes, best-first by score, never a node without its parent.

        Without scores, nodes are kept breadth-first (shallow first, then index order).
        """
        if budget < 0:
            raise ValueError(f"budget must be >= 0, got {budget}")
        if self.num_nodes <= budget:
            return self
        if self.scores is None:
            order = np.lexsort((np.arange(self.num_nodes), self.depths()))
            return self.subtree(np.sort(order[:budget]))
        return self.subtree(best_first(self.parents.tolist(), self.scores.tolist(), budget))

    def best_path(self) -> list[int]:
        """Node indices of the single best path.

        With scores: the path to the highest-scoring leaf-or-node maximising the sum of node
        scores (ties: longer, then lower index). Without scores: the longest path (ties: lower
        index). Used for chain-only engine hooks.
        """
        if self.num_nodes == 0:
            return []
        if self.leading_chain() == self.num_nodes and (self.scores is None or bool((self.scores >= 0).all())):
            # a chain's sums only grow along it: its last node is the best (what most steps send)
            return list(range(self.num_nodes))
        if self.scores is None:
            d = self.depths()
            return self.path_to(int(np.argmax(d)))
        return best_scored_path(self.parents.tolist(), self.scores.tolist())

    def lead_path(self) -> list[int]:
        """The path an engine should lay out first (``lead_path_first``): the best path, or for a
        stochastic tree the path of first-drawn children (its siblings' index order is their draw
        order, which recursive rejection reads, so no later-drawn child may move ahead of them)."""
        if self.deterministic:
            return self.best_path()
        path, kids = [], self.children(-1)
        while kids.size:
            path.append(int(kids[0]))
            kids = self.children(path[-1])
        return path

    def lead_path_first(self) -> "DraftTree":
        """The same tree with ``lead_path()`` as nodes 0..d-1 and the other nodes after it in their
        old order (still parents first: a node's parent is on the path or earlier among the rest;
        siblings keep their relative order).

        An engine that verifies the flattened tree in one causal-attention forward computes the
        leading chain's rows exactly as a chain step would; only the rows after it need the tree
        mask (tree_step.TreeRow.first_masked_row)."""
        path = self.lead_path()
        if path == list(range(len(path))):
            return self
        on_path = np.zeros(self.num_nodes, dtype=bool)
        on_path[path] = True
        order = np.concatenate([np.asarray(path, np.int64), np.flatnonzero(~on_path)])
        new_index = np.empty(self.num_nodes, np.int64)
        new_index[order] = np.arange(self.num_nodes)
        old_parents = self.parents[order].astype(np.int64)
        parents = np.where(old_parents >= 0, new_index[np.maximum(old_parents, 0)], -1)
        return DraftTree._derived(
            self.tokens[order], parents,
            draft_probs=None if self.draft_probs is None else self.draft_probs[order],
            deterministic=self.deterministic,
            scores=None if self.scores is None else self.scores[order],
        )

    def leading_chain(self) -> int:
        """How many nodes from node 0 on form a single path (node i the child of node i-1)."""
        expected = np.arange(-1, self.num_nodes - 1)
        off = np.flatnonzero(self.parents != expected)
        return int(off[0]) if off.size else self.num_nodes

    def chain_of_best(self) -> "DraftTree":
        """The best single path as a chain tree (what vLLM's stock chain hook can verify)."""
        return self.subtree(self.best_path())

    def chain_tokens(self) -> list[int]:
        """Token ids of the best single path: the list vLLM's ``custom_class`` hook returns."""
        return [int(self.tokens[i]) for i in self.best_path()]

    def pad_to(self, width: int) -> "DraftTree":
        """Append PAD_TOKEN nodes (children of the root) up to ``width`` nodes.

        Padding is never accepted by a verifier. Scores of padding are -inf.
        """
        n = self.num_nodes
        if width < n:
            raise ValueError(f"cannot pad a tree of {n} nodes to width {width}; prune first")
        extra = width - n
        dp = None
        if self.draft_probs is not None:
            dp = np.concatenate([self.draft_probs, np.zeros((extra, self.draft_probs.shape[1]), np.float32)])
        return DraftTree(
            np.concatenate([self.tokens, np.full(extra, PAD_TOKEN, np.int32)]),
            np.concatenate([self.parents, np.full(extra, -1, np.int32)]),
            draft_probs=dp,
            deterministic=self.deterministic,
            scores=None if self.scores is None else np.concatenate([self.scores, np.full(extra, -np.inf, np.float32)]),
        )

    def merge(self, other: "DraftTree") -> "DraftTree":
        """Union of two deterministic trees by longest-prefix matching.

        Each of ``other``'s nodes is matched to an existing child with the same token under the
        matched parent, else grafted as a new branch. Siblings stay distinct; a matched node
        keeps the larger score. Padding nodes are dropped.
        """
        if not (self.deterministic and other.deterministic):
            raise ValueError("merge is defined for deterministic trees only")
        tokens, parents = self.tokens.tolist(), self.parents.tolist()
        if self.scores is None and other.scores is None:
            scores = None
        else:
            scores = self.scores.tolist() if self.scores is not None else [0.0] * self.num_nodes
        o_tokens = other.tokens.tolist()
        graft_into(tokens, parents, scores, o_tokens, other.parents.tolist(),
                   None if other.scores is None else other.scores.tolist(),
                   drop=[t == PAD_TOKEN for t in o_tokens])
        keep = [i for i, t in enumerate(tokens) if t != PAD_TOKEN]
        merged = DraftTree(
            np.asarray(tokens, np.int64),
            np.asarray(parents, np.int64),
            scores=None if scores is None else np.asarray(scores, np.float32),
        )
        return merged if len(keep) == merged.num_nodes else merged.subtree(keep)

    # ------------------------------------------------------------------ engine layouts
    def to_sglang(self, root_token: int, width: int, pad_token_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """SGLang NGRAM layout: (tokens int64[width], mask bool[width*width]).

        Node 0 is the root (``root_token``), followed by the tree's nodes, padded to ``width``
        (which counts the root). mask[i*width + j] is True iff j is i or an ancestor of i.
        Padding rows see only the root and themselves; their token is ``pad_token_id``.
        """
        n = self.num_nodes
        if width < n + 1:
            raise ValueError(f"tree of {n} nodes (+root) does not fit width {width}")
        toks = np.full(width, pad_token_id, np.int64)
        toks[0] = root_token
        real = self.tokens != PAD_TOKEN
        toks[1 : n + 1] = np.where(real, self.tokens, pad_token_id)
        m = np.zeros((width, width), dtype=bool)
        m[:, 0] = True
        m[np.arange(width), np.arange(width)] = True
        anc = self.ancestor_mask()
        m[1 : n + 1, 1 : n + 1] = anc
        return toks, m.reshape(-1)

    def copy(self) -> "DraftTree":
        return DraftTree(
            self.tokens.copy(),
            self.parents.copy(),
            draft_probs=None if self.draft_probs is None else self.draft_probs.copy(),
            deterministic=self.deterministic,
            scores=None if self.scores is None else self.scores.copy(),
        )


@dataclass
class TreeBatch:
    """Padded, tensor-friendly view of a batch of trees (what kernels consume).

    tokens, parents: int32[B, W] (padding: PAD_TOKEN / -1); num_nodes: int32[B];
    depths: int32[B, W] (0 for padding).
    """

    tokens: np.ndarray
    parents: np.ndarray
    num_nodes: np.ndarray
    depths: np.ndarray

    @classmethod
    def from_trees(cls, trees: list[DraftTree], width: int | None = None) -> "TreeBatch":
        if width is None:
            width = max([t.num_nodes for t in trees], default=0)
        b = len(trees)
        tokens = np.full((b, width), PAD_TOKEN, np.int32)
        parents = np.full((b, width), -1, np.int32)
        depths = np.zeros((b, width), np.int32)
        num = np.zeros(b, np.int32)
        for i, t in enumerate(trees):
            if t.num_nodes > width:
                raise ValueError(f"tree {i} has {t.num_nodes} nodes, more than width {width}")
            tokens[i, : t.num_nodes] = t.tokens
            parents[i, : t.num_nodes] = t.parents
            depths[i, : t.num_nodes] = t.depths()
            num[i] = t.num_nodes
        return cls(tokens, parents, num, depths)
