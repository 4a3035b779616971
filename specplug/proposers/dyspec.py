"""DySpec (Xiong et al., arXiv 2410.11744): a dynamic draft tree grown from a small draft model.

A node's *value* is the product of the draft probabilities along its root path: the paper's
estimate of the chance that the node is reached and accepted, so a tree's expected accepted
length is about the sum of its values. Values never grow down a path, so the best tree for a node
budget B is the B highest-valued nodes, and it is ancestor-closed.

The paper adds nodes one at a time from a heap; like EAGLE-2 we batch by level (one draft
forward per level, reference/methods.md §4):

1. the draft model's distribution after the committed tokens gives the root's ``topk``
   children, valued by their probability;
2. at each level the ``width`` highest-valued nodes (value >= ``min_value``) are expanded in one
   forward (each attends to the committed tokens and its own ancestors) and get ``topk``
   children, valued parent value x child probability;
3. growth stops at ``max_depth``, or when no node of the level could still enter the top B
   (its children are worth no more than it);
4. all nodes are reranked by value and the top B kept (ties: shallower first, so ancestors stay).

Calibration (``calibrate: true``, an addition to the paper): a small draft model's probabilities
are not acceptance rates. On the zoo models its top-1 token with q < 0.1 is accepted a third of
the time and its runners-up almost never, so raw values spend the budget on siblings. Each
node's factor is therefore the acceptance rate measured online for its (rank 0 or not, q decile),
shrunk towards q itself (q when nothing is measured yet). Outcomes are read from the next step's
context: the committed tokens after a drafted tree are the target's own, so each node whose
parent was accepted is a trial, accepted if its token is the one that came.

Greedy requests: children are the draft model's top-k, so the tree is deterministic and verified
by greedy matching. Sampling requests whose engine verifies stochastic trees (``Budget.temperature``
> 0): children are ``topk`` draws *without replacement* from q = softmax(draft logits / T), in draw
order, and the tree carries each node's q so that recursive rejection (SpecInfer; specplug/verify.py)
verifies it: a child is accepted with min(1, p/q) rather than with p alone, which is what
sample-and-match would give a top-k child. Recursive rejection reads siblings in index order as
their draw order, so a node keeps only a draw-order *prefix* of its children: a child's value is
capped at its earlier siblings' (values still never grow, and ties keep the earlier draw), and the
``min_value`` cut and the top-B rerank then drop only tails.
Where the engine verifies chains, the draft is grown as a chain (``topk`` = ``width`` = 1): the
draft model's greedy continuation, stopped once its value falls below ``min_value``; any draft is
exact there (vLLM accepts a chain token with probability p(x)).
The node budget per request is the controller's (it shrinks as the batch grows).
With the written-out draft model (``LeanDraftLM``) the step's chains are drafted together, one
draft forward per depth for every request still drafting (``_grow_chains``, the same chains as
``_grow`` with ``topk`` = ``width`` = 1); trees are grown request by request.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from specplug.proposers.base import Budget, Proposer, ProposerOptions, ReqState, VerifyInfo
from specplug.proposers.drafters import TargetInfo, check_same_tokenizer, resolve_drafter
from specplug.tree import DraftTree


class DySpecOptions(ProposerOptions):
    draft_model: str = Field(..., description="draft decoder: a transformers folder, or zoo-draft")
    topk: int = Field(4, ge=1, le=32, description="children drafted per expanded node")
    width: int = Field(4, ge=1, le=64, description="nodes expanded per level (one draft forward per level)")
    max_depth: int | None = Field(None, ge=1, le=128, description="tree depth cap (None: the node budget)")
    min_value: float = Field(0.01, ge=0.0, le=1.0, description="drop nodes whose path value is lower")
    calibrate: bool = Field(True, description="value nodes by acceptance rates measured online, not raw draft probability")


class AcceptanceCalibration:
    """P(accepted | parent accepted) per (rank 0 or not, decile of the draft probability q),
    measured from verification outcomes and shrunk towards q with ``prior`` pseudo-trials."""

    def __init__(self, enabled: bool = True, prior: float = 8.0):
        self.enabled = enabled
        self.prior = prior
        self.hits = np.zeros((2, 10))
        self.trials = np.zeros((2, 10))

    @staticmethod
    def _cell(rank: int, q: float) -> tuple[int, int]:
        return min(rank, 1), min(int(q * 10), 9)

    def prob(self, rank: int, q: float) -> float:
        if not self.enabled:
            return q
        r, b = self._cell(rank, q)
        return float((self.hits[r, b] + self.prior * q) / (self.trials[r, b] + self.prior))

    def update(self, rank: int, q: float, accepted: bool) -> None:
        r, b = self._cell(rank, q)
        self.trials[r, b] += 1
        self.hits[r, b] += accepted


def sample_without_replacement(probs: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``k`` distinct token ids in draw order, distributed as k successive draws from
    ``probs`` without replacement (each from the rest, renormalised): the Gumbel-top-k trick
    (Kool et al. 2019), one vectorised pass. Tokens of probability 0 are never drawn."""
    with np.errstate(divide="ignore"):
        keys = np.log(probs.astype(np.float64)) + rng.gumbel(size=probs.shape)
    k = min(k, int(np.count_nonzero(probs > 0)))
    top = np.argpartition(-keys, k - 1)[:k] if k < keys.size else np.arange(keys.size)
    return top[np.argsort(-keys[top], kind="stable")]


def top_k_stable(probs: np.ndarray, k: int) -> np.ndarray:
    """``np.argsort(-probs, kind="stable")[:k]`` (ties: lower id first) without sorting the whole
    vocabulary: that sort was a fifth of a draft step on the zoo draft's 4096 rows."""
    if k >= probs.size:
        return np.argsort(-probs, kind="stable")
    kth = probs[np.argpartition(-probs, k - 1)[:k]].min()
    cand = np.flatnonzero(probs >= kth)  # every tie of the k-th value, in id order
    return cand[np.argsort(-probs[cand], kind="stable")][:k]


class _Sent:
    """A drafted tree as the calibration needs it: context length, tokens, parents, (rank, q)."""

    def __init__(self, context_len, tok, parent, rank, q):
        self.context_len, self.tok, self.parent, self.rank, self.q = context_len, tok, parent, rank, q


class DySpecProposer(Proposer):
    name = "dyspec"
    Options = DySpecOptions

    def __init__(self, options: DySpecOptions, num_speculative_tokens: int):
        super().__init__(options, num_speculative_tokens)
        from specplug.proposers.draft_lm import load_draft_lm

        self.folder = resolve_drafter(options.draft_model, "dyspec.draft_model")
        self.lm = load_draft_lm(self.folder)
        self.calibration = AcceptanceCalibration(options.calibrate)
        self._sent: dict[str, _Sent] = {}  # req_id -> the last tree drafted for it
        # draws of sampled children; independent of the engine's verification randomness, which
        # is all recursive rejection needs (a seeded request's output is then exact in
        # distribution, not the same tokens as without speculation)
        self._rng = np.random.default_rng()

    def bind_target(self, target: TargetInfo) -> None:
        check_same_tokenizer(self.folder, self.lm.vocab_size, target, "dyspec.draft_model")

    def stop(self, req_id: str) -> None:
        self.lm.drop(req_id)
        self._sent.pop(req_id, None)

    def start(self, req_id: str, prompt_ids, tenant: str | None = None) -> None:
        self.stop(req_id)  # a reused id: its old cache and tree are not this request's

    def _learn(self, req_id: str, tokens: list[int]) -> None:
        """Score the request's last tree against the tokens committed since it was drafted."""
        sent = self._sent.pop(req_id, None)
        if sent is None or not self.calibration.enabled or len(tokens) <= sent.context_len:
            return
        came = tokens[sent.context_len:]
        node, depth = -1, 0
        while depth < len(came):
            nxt = -1
            for i, p in enumerate(sent.parent):
                if p == node:
                    hit = sent.tok[i] == came[depth]
                    self.calibration.update(sent.rank[i], sent.q[i], hit)
                    if hit:
                        nxt = i
            if nxt < 0:
                break
            node, depth = nxt, depth + 1

    def observe(self, req_id: str, accepted_ids, info: VerifyInfo | None = None) -> None:
        pass  # the next propose() sees the committed tokens and crops the cache to them

    def propose(self, batch: list[ReqState], budget: list[Budget]) -> list[DraftTree]:
        out = [DraftTree.empty()] * len(batch)
        chains = []  # (index, req_id, tokens, length cap) of the requests drafted as chains
        batched = hasattr(self.lm, "extend_batch")
        for idx, (r, b) in enumerate(zip(batch, budget)):
            cap = min(b.max_nodes, self.num_speculative_tokens)
            tokens = [int(t) for t in r.token_ids]
            self._learn(r.req_id, tokens)
            depth_cap = min(cap, self.options.max_depth or cap, self.lm.max_positions - len(tokens))
            if cap <= 0 or depth_cap <= 0:
                continue
            if b.tree:
                out[idx] = self._grow(r.req_id, tokens, cap, depth_cap, self.options.topk, self.options.width,
                                      b.temperature)
            elif batched:
                chains.append((idx, r.req_id, tokens, depth_cap))
            else:
                out[idx] = self._grow(r.req_id, tokens, cap, depth_cap, 1, 1)
        if chains:
            for (idx, *_), tree in zip(chains, self._grow_chains(chains)):
                out[idx] = tree
        return out

    def _grow_chains(self, chains) -> list[DraftTree]:
        """The chains ``_grow(topk=1, width=1)`` drafts, for all chain requests at once: one draft
        forward per depth for the whole batch (the weights are read once per depth), each chain
        leaving the batch when its value falls below ``min_value`` or it reaches its length cap."""
        o, cal, lm = self.options, self.calibration, self.lm
        req_ids = [req_id for _, req_id, _, _ in chains]
        drafted = [([], [], []) for _ in chains]  # per chain: tokens, values, q
        active = list(range(len(chains)))
        done = False
        try:
            logits = lm.next_logits_batch(req_ids, [tokens for _, _, tokens, _ in chains])
            while active:
                probs = logits.softmax(-1)
                top = probs.argmax(-1)  # ties: the lowest id, as top_k_stable
                q, top = probs.gather(1, top[:, None])[:, 0].tolist(), top.tolist()
                still = []
                for row, c in enumerate(active):
                    tok, val, qs = drafted[c]
                    v = (val[-1] if val else 1.0) * cal.prob(0, q[row])
                    if v < o.min_value:
                        continue
                    tok.append(int(top[row])), val.append(v), qs.append(q[row])
                    if len(tok) < chains[c][3]:
                        still.append(c)
                active = still
                if active:
                    logits = lm.extend_batch([req_ids[c] for c in active], [drafted[c][0][-1] for c in active])
            done = True
        finally:
            for req_id, (tok, _, _) in zip(req_ids, drafted):
                if done:  # the accepted part need not be fed again next step
                    lm.end_chain(req_id, tok)
                else:
                    lm.end_tree(req_id)
        out = []
        for (_, req_id, tokens, _), (tok, val, qs) in zip(chains, drafted):
            if not tok:
                out.append(DraftTree.empty())
                continue
            parents = list(range(-1, len(tok) - 1))
            self._sent[req_id] = _Sent(len(tokens), tok, parents, [0] * len(tok), qs)
            out.append(DraftTree(np.asarray(tok), np.asarray(parents), scores=np.asarray(val, np.float32)))
        return out

    def _grow(self, req_id: str, tokens: list[int], budget: int, max_depth: int, topk: int, width: int,
              temperature: float = 0.0) -> DraftTree:
        o = self.options
        lm = self.lm
        logits = lm.next_logits(req_id, tokens)
        cal = self.calibration
        sampled = temperature > 0
        # per node: token, parent, value, depth, cache slot once expanded (-1: a leaf), rank, q,
        # and (sampled trees) the index in q_rows of the distribution it was drawn from
        rank: list[int] = []
        qs: list[float] = []
        tok: list[int] = []
        parent: list[int] = []
        value: list[float] = []
        depth: list[int] = []
        slot: list[int] = []
        q_rows: list[np.ndarray] = []
        q_row: list[int] = []

        def dist(x) -> np.ndarray:
            return (x / temperature if sampled else x).softmax(-1).numpy()

        def add_children(p: int, probs: np.ndarray, base: float, d: int) -> list[int]:
            if sampled:
                top = sample_without_replacement(probs, topk, self._rng)
                q_rows.append(probs)
            else:
                top = top_k_stable(probs, topk)
            new, cap = [], base
            for r, t in enumerate(top):
                q = float(probs[t])
                v = base * cal.prob(r, q)
                if sampled:  # a draw-order prefix of siblings survives every cut (module doc)
                    v = cap = min(v, cap)
                if v < o.min_value:
                    if sampled:
                        break
                    continue
                tok.append(int(t)), parent.append(p), value.append(v), depth.append(d), slot.append(-1)
                rank.append(r), qs.append(q), q_row.append(len(q_rows) - 1)
                new.append(len(tok) - 1)
            return new

        level = add_children(-1, dist(logits), 1.0, 1)
        next_slot = len(tokens)  # cache index of the next appended tree node
        try:
            for d in range(1, max_depth):
                if not level:
                    break
                if len(value) >= budget:
                    kth = np.partition(np.asarray(value), len(value) - budget)[len(value) - budget]
                    if max(value[i] for i in level) <= kth:
                        break  # no child of this level can enter the top `budget`
                expand = sorted(level, key=lambda i: (-value[i], i))[:width]
                anc = []
                for i in expand:
                    chain, p = [], parent[i]
                    while p >= 0:
                        chain.append(slot[p])
                        p = parent[p]
                    anc.append(chain)
                    slot[i] = next_slot
                    next_slot += 1
                level_logits = lm.tree_level(req_id, [tok[i] for i in expand],
                                             [len(tokens) - 1 + d] * len(expand), anc)
                probs = dist(level_logits)
                level = []
                for row, i in enumerate(expand):
                    level += add_children(i, probs[row], value[i], d + 1)
        finally:
            lm.end_tree(req_id)
        if not tok:
            return DraftTree.empty()
        order = sorted(range(len(tok)), key=lambda i: (-value[i], depth[i], i))[:budget]
        order.sort(key=lambda i: (depth[i], i))  # parents first
        index = {old: new for new, old in enumerate(order)}
        tree_tokens = [tok[i] for i in order]
        tree_parents = [index[parent[i]] if parent[i] >= 0 else -1 for i in order]
        self._sent[req_id] = _Sent(len(tokens), tree_tokens, tree_parents,
                                   [rank[i] for i in order], [qs[i] for i in order])
        scores = np.asarray([value[i] for i in order], np.float32)
        if not sampled:
            return DraftTree(np.asarray(tree_tokens), np.asarray(tree_parents), scores=scores)
        # siblings in draw order: their indices grew with it and the parents-first sort keeps it
        q = np.stack([q_rows[q_row[i]] for i in order]).astype(np.float32, copy=False)
        return DraftTree(np.asarray(tree_tokens), np.asarray(tree_parents), draft_probs=q, deterministic=False,
                         scores=scores)
