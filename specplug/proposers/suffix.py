"""SuffixDecoding (Oliaro et al., arXiv 2411.04975): model-free drafting from suffix trees.

Two sources of drafts:
- the request's own prompt + output so far (*local*): the paper's per-request suffix tree, read
  on demand from the positions where the context's suffixes occurred (specplug/proposers/
  suffix_local.py) instead of being built token by token;
- a *global* trie (specplug/proposers/suffix_tree.py) over the outputs of past requests (FIFO-bounded by count and bytes), one per
  tenant when tenant isolation is on, so tenants never draft from each other's responses.

Each step, for every match length p (the last p context tokens found in a trie), a draft of at
most min(budget, floor(alpha * p + offset)) tokens grows from the matched node:
- tree mode: best-first by path probability (product of child/parent count ratios), keeping
  nodes with path probability >= min_token_prob (the paper's greedy speculation-tree expansion);
- path mode: follow the most frequent child while the path probability stays >= min_token_prob.
A draft's score is the sum of its node probabilities (the expected number of accepted tokens
under the frequency model); the best-scoring draft over all p and both tries wins (ties: the
longer match). Frequencies are only used to *choose* tokens: verification is sample-and-match,
never rejection sampling with these frequencies as q.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import Field

from specplug.proposers.base import Budget, Proposer, ProposerOptions, ReqState, VerifyInfo
from specplug.proposers.suffix_local import LocalContext
from specplug.proposers.suffix_tree import SuffixTrie
from specplug.tree import DraftTree


class SuffixOptions(ProposerOptions):
    max_depth: int = Field(24, ge=1, le=256, description="suffix trie depth (longest match and draft)")
    max_spec_factor: float = Field(1.0, gt=0, description="alpha: draft budget = alpha * match length + offset")
    max_spec_offset: float = Field(0.0, description="offset in the draft budget")
    min_token_prob: float = Field(0.1, ge=0.0, le=1.0, description="drop draft nodes below this path probability")
    max_cached_requests: int = Field(10000, ge=0, description="past responses kept in the global trie; 0 disables it")
    max_cache_bytes: int | None = Field(None, ge=0, description="approximate byte cap of the global trie")
    mode: Literal["tree", "path"] = Field("tree", description="tree: best-first tree; path: best single path")
    tenant_isolation: bool = Field(False, description="one global trie per tenant key")


@dataclass
class _Draft:
    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    score: float = 0.0
    match_len: int = 0


@dataclass
class _Request:
    tenant: object
    local: LocalContext  # prompt + output as seen so far
    num_prompt: int
    global_epoch: int = -1  # epoch of the global trie the cached match belongs to
    global_match: list[int] = field(default_factory=list)  # node of context[-p:] for p = 1..
    unfolded: int = 0  # tokens appended since global_match was brought up to date

    @property
    def tokens(self) -> list[int]:
        return self.local.tokens


class SuffixProposer(Proposer):
    name = "suffix"
    Options = SuffixOptions

    def __init__(self, options: SuffixOptions, num_speculative_tokens: int):
        super().__init__(options, num_speculative_tokens)
        self._reqs: dict[str, _Request] = {}
        self._global: dict[object, SuffixTrie] = {}
        self._fifo: dict[object, deque] = {}
        self._epoch: dict[object, int] = {}
        self._seq_counter = 0

    # ------------------------------------------------------------------ lifecycle
    def _tenant_key(self, tenant):
        return tenant if self.options.tenant_isolation else None

    def start(self, req_id: str, prompt_ids, tenant: str | None = None) -> None:
        if req_id in self._reqs:  # a reused request id: the old request is over
            self.stop(req_id)
        local = LocalContext(self.options.max_depth, [int(t) for t in prompt_ids])
        self._reqs[req_id] = _Request(self._tenant_key(tenant), local, len(local))

    def observe(self, req_id: str, accepted_ids, info: VerifyInfo | None = None) -> None:
        req = self._reqs.get(req_id)
        if req is None:
            return
        for t in accepted_ids:
            self._append(req, int(t))

    def stop(self, req_id: str) -> None:
        req = self._reqs.pop(req_id, None)
        if req is None or self.options.max_cached_requests == 0:
            return
        response = req.tokens[req.num_prompt :]
        if not response:
            return
        trie = self._global_trie(req.tenant)
        self._seq_counter += 1
        trie.add_sequence(self._seq_counter, response, final=True)
        fifo = self._fifo[req.tenant]
        fifo.append(self._seq_counter)
        cap_bytes = self.options.max_cache_bytes
        while fifo and (len(fifo) > self.options.max_cached_requests
                        or (cap_bytes is not None and trie.approx_bytes() > cap_bytes)):
            trie.remove_sequence(fifo.popleft())
        self._epoch[req.tenant] += 1

    def _global_trie(self, tenant) -> SuffixTrie:
        if tenant not in self._global:
            self._global[tenant] = SuffixTrie(self.options.max_depth)
            self._fifo[tenant] = deque()
            self._epoch[tenant] = 0
        return self._global[tenant]

    def _append(self, req: _Request, token: int) -> None:
        # The global match is brought up to date only when this request drafts (_global_matches):
        # a request the controller keeps off pays O(1) per token, not a walk of up to max_depth.
        req.local.append(token)
        req.unfolded += 1

    # ------------------------------------------------------------------ drafting
    def _sync(self, r: ReqState) -> _Request:
        req = self._reqs.get(r.req_id)
        if req is None:
            self.start(r.req_id, r.token_ids[: r.num_prompt_tokens], r.tenant)
            req = self._reqs[r.req_id]
        n = len(r.token_ids)
        if n > len(req.tokens):  # tokens the engine committed that observe() did not report
            for t in r.token_ids[len(req.tokens) :]:
                self._append(req, int(t))
        return req

    def _global_matches(self, req: _Request) -> list[int]:
        trie = self._global.get(req.tenant)
        if trie is None or trie.num_sequences == 0:
            return []
        if req.global_epoch != self._epoch[req.tenant] or req.unfolded > trie.max_depth // 2:
            # the trie changed, or folding token by token would walk more than matching afresh
            req.global_match = trie.match(req.tokens, trie.max_depth)
            req.global_epoch = self._epoch[req.tenant]
        elif req.unfolded:
            tokens = req.tokens
            for t in tokens[len(tokens) - req.unfolded :]:
                req.global_match = trie.extend_match(req.global_match, t)
        req.unfolded = 0
        return req.global_match

    def _budget(self, p: int, cap: int) -> int:
        o = self.options
        return max(0, min(cap, int(math.floor(o.max_spec_factor * p + o.max_spec_offset))))

    def _draft_from(self, trie: SuffixTrie, node: int, max_tokens: int, tree: bool) -> _Draft:
        d = _Draft()
        min_p = self.options.min_token_prob
        count, kids_of, token = trie.count, trie.kids, trie.token  # kids: SuffixTrie unfolds tails
        if not tree:
            prob, cur, parent = 1.0, node, -1
            while len(d.tokens) < max_tokens:
                kids = kids_of(cur)
                if not kids:
                    break
                best = max(kids.values(), key=lambda c: (count[c], -token[c]))
                prob *= count[best] / count[cur]
                if prob < min_p:
                    break
                d.tokens.append(token[best])
                d.parents.append(parent)
                d.probs.append(prob)
                parent, cur = len(d.tokens) - 1, best
        else:
            heap: list[tuple[float, int, int, int]] = []
            tie = 0
            for c in (kids_of(node) or {}).values():
                p = count[c] / count[node]
                if p >= min_p:
                    heap.append((-p, tie, c, -1))
                    tie += 1
            heapq.heapify(heap)
            while heap and len(d.tokens) < max_tokens:
                negp, _, c, parent = heapq.heappop(heap)
                idx = len(d.tokens)
                d.tokens.append(token[c])
                d.parents.append(parent)
                d.probs.append(-negp)
                for g in (kids_of(c) or {}).values():
                    p = -negp * count[g] / count[c]
                    if p >= min_p:
                        heapq.heappush(heap, (-p, tie, g, idx))
                        tie += 1
        d.score = float(sum(d.probs))
        return d

    def _best_draft(self, subtree, num_matches: int, cap: int, tree: bool, occurrences=None) -> _Draft:
        """The best-scoring draft over match lengths p = 1..num_matches (ties: the longer match).

        ``subtree(p, budget)``: (trie, node) under the match of the context's last p tokens;
        ``occurrences(p)``: how many times those p tokens occur (None: no occurrence shortcut).

        A draft from p scores at most bound(p) = min(budget(p), max_depth - p): it has at most
        budget(p) nodes, none deeper than max_depth - p, and the path probabilities at one depth
        sum to at most 1. So the lengths are tried in order of that bound, highest first (ties:
        longer first), and the search stops once the best score reaches the next bound. Longest
        first instead, a looping context (every p matching, with as many occurrences as loop
        turns) drafted from a dozen lengths whose bound kept growing: 1.8 ms per request for a
        250-token period-1 loop."""
        max_depth = self.options.max_depth
        order = []
        for p in range(num_matches, 0, -1):
            budget = self._budget(p, cap)
            bound = min(budget, max_depth - p)
            if bound > 0:
                order.append((bound, p, budget))
        order.sort(key=lambda e: (-e[0], -e[1]))
        best = _Draft()
        drafted = []  # (occurrences, budget, depth bound, p) of the matches drafted from
        for bound, p, budget in order:
            if best.tokens and (best.score > bound or (best.score == bound and best.match_len > p)):
                break  # no remaining length can beat (or tie from a longer match) the best
            if occurrences is not None:
                # A shorter match with as many occurrences occurs exactly where a longer one does
                # (each occurrence of the longer is one of the shorter), so it has the same
                # continuations; with no larger budget or depth its draft is a prefix of the longer
                # match's draft: it cannot score higher, and a tie goes to the longer. Skipping it
                # changes no draft.
                n_occ = occurrences(p)  # bound = min(budget, max_depth - p) is also the depth bound
                if any(n == n_occ and q > p and budget <= b and bound <= d for n, b, d, q in drafted):
                    continue
                drafted.append((n_occ, budget, bound, p))
            d = self._draft_from(*subtree(p, budget), budget, tree)
            d.match_len = p
            if d.score > best.score or (d.score == best.score and d.tokens and p > best.match_len) \
                    or (not best.tokens and d.tokens):
                best = d
        return best

    def propose(self, batch: list[ReqState], budget: list[Budget]) -> list[DraftTree]:
        out = []
        for r, b in zip(batch, budget):
            req = self._sync(r)
            cap = min(b.max_nodes, self.num_speculative_tokens)
            if cap <= 0:
                out.append(DraftTree.empty())
                continue
            tree = b.tree and self.options.mode == "tree"
            local, occ = req.local, req.local.matches()
            best = self._best_draft(lambda p, budget: (local.continuations(occ[p - 1], p, budget), 0),
                                    len(occ), cap, tree, occ.size)
            trie = self._global.get(req.tenant)
            if trie is not None:
                matches = self._global_matches(req)
                g = self._best_draft(lambda p, budget: (trie, matches[p - 1]), len(matches), cap, tree,
                                     lambda p: trie.count[matches[p - 1]])
                if g.score > best.score or (g.score == best.score and g.match_len > best.match_len):
                    best = g
            if not best.tokens:
                out.append(DraftTree.empty())
                continue
            out.append(DraftTree(np.asarray(best.tokens), np.asarray(best.parents),
                                 scores=np.asarray(best.probs, np.float32)))
        return out

    # ------------------------------------------------------------------ introspection
    def global_cache_stats(self) -> dict:
        return {
            "tenants": len(self._global),
            "cached_requests": sum(t.num_sequences for t in self._global.values()),
            "nodes": sum(t.num_nodes for t in self._global.values()),
            "approx_bytes": sum(t.approx_bytes() for t in self._global.values()),
        }
