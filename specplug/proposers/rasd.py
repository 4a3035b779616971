"""RASD: Retrieval-Augmented Speculative Decoding (Quan et al., arXiv 2503.03434).

1. Retrieval: continuations of the context's last n tokens (n from max_ngram down to min_ngram)
   found (a) earlier in the request's own context (prompt lookup) and (b) in an optional user
   corpus indexed once at start-up (an n-gram -> positions index over the corpus tokens).
2. Retrieval tree: the candidates merged into a trie; a node's score is the fraction of the
   retrieved candidates that pass through it.
3. Pruning: with a drafter tree, keep retrieval branches whose first token is among the drafter's
   top-k children of the root or whose score reaches the threshold (our reading of the paper's
   "prune with the draft model's distribution"); without one, drop nodes below the threshold.
4. Fusion with the drafter tree by longest-prefix matching (DraftTree.merge), then the node budget.
The drafter here is another specplug proposer (`fuse_with`), until model drafters land; its scores
are then frequencies, not draft-model probabilities. Everything is verified as deterministic
tokens (sample-and-match), so pruning choices never affect exactness.
"""

from __future__ import annotations

import heapq
import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from specplug.proposers.base import Budget, Proposer, ProposerOptions, ReqState, VerifyInfo
from specplug.tree import DraftTree


class RasdOptions(ProposerOptions):
    corpus: str | None = Field(None, description="file or directory: .jsonl rows {'token_ids': [...]} or {'text': ...}, or .txt")
    tokenizer: str | None = Field(None, description="local tokenizer folder, needed for text corpora")
    min_ngram: int = Field(1, ge=1)
    max_ngram: int = Field(4, ge=1)
    max_candidates: int = Field(8, ge=1, description="continuations retrieved per source per step")
    max_continuation: int = Field(8, ge=1, description="tokens per retrieved continuation")
    prune_top_k: int = Field(4, ge=1, description="with a drafter: keep branches starting with its top-k root tokens")
    prune_threshold: float = Field(0.0, ge=0.0, le=1.0, description="keep nodes whose retrieval score reaches this")
    fuse_with: Literal["suffix", "recycling"] | None = Field(None, description="drafter proposer whose tree is fused")

    @field_validator("corpus")
    @classmethod
    def _corpus_exists(cls, v):
        if v is not None and not Path(v).exists():
            raise ValueError(f"corpus path does not exist: {v}")
        return v

    @model_validator(mode="after")
    def _ngram_range(self):
        if self.max_ngram < self.min_ngram:
            raise ValueError(f"max_ngram ({self.max_ngram}) must be >= min_ngram ({self.min_ngram})")
        return self


# ---------------------------------------------------------------------- retrieval
def context_candidates(ctx: np.ndarray, min_n: int, max_n: int, max_cands: int, max_len: int) -> list[list[int]]:
    """Continuations of the last n tokens found earlier in ``ctx`` (longest n first, then most
    recent occurrence first)."""
    if len(ctx) < 2:
        return []
    # end positions j of earlier occurrences (an occurrence must be followed by a token, so
    # j <= len - 2), found for n = 1 and narrowed for each longer n
    ends = np.flatnonzero(ctx[:-1] == ctx[-1])
    by_n = []
    for n in range(1, min(max_n, len(ctx) - 1) + 1):
        if n > 1:
            ends = ends[ends >= n - 1]
            ends = ends[ctx[ends - (n - 1)] == ctx[-n]]
        if ends.size == 0:
            break
        by_n.append(ends)
    out: list[list[int]] = []
    tokens = ctx.tolist() if by_n else []
    for n in range(len(by_n), min_n - 1, -1):
        for j in by_n[n - 1][::-1].tolist():
            out.append(tokens[j + 1 : j + 1 + max_len])
            if len(out) >= max_cands:
                return out
    return out


class CorpusIndex:
    """n-gram -> corpus positions (capped per key), over documents concatenated with boundaries."""

    MAX_POSITIONS = 64

    def __init__(self, docs: list[list[int]], min_n: int, max_n: int):
        self.tokens = np.concatenate([np.asarray(d, np.int64) for d in docs]) if docs else np.zeros(0, np.int64)
        self.doc_end = np.concatenate([np.full(len(d), off + len(d)) for d, off in
                                       zip(docs, np.cumsum([0] + [len(d) for d in docs[:-1]]))]) if docs else np.zeros(0)
        self.index: dict[tuple[int, ...], list[int]] = {}
        toks = self.tokens.tolist()
        for n in range(min_n, max_n + 1):
            for i in range(len(toks) - n):
                if i + n >= self.doc_end[i]:
                    continue  # the n-gram (plus one continuation token) must stay inside its document
                key = tuple(toks[i : i + n])
                lst = self.index.setdefault(key, [])
                if len(lst) < self.MAX_POSITIONS:
                    lst.append(i)

    def candidates(self, ctx: np.ndarray, min_n: int, max_n: int, max_cands: int, max_len: int) -> list[list[int]]:
        out = []
        for n in range(min(max_n, len(ctx)), min_n - 1, -1):
            for i in self.index.get(tuple(int(t) for t in ctx[-n:]), ()):
                end = min(i + n + max_len, int(self.doc_end[i]))
                out.append(self.tokens[i + n : end].tolist())
                if len(out) >= max_cands:
                    return out
        return out


def load_corpus(path: str, tokenizer: str | None) -> list[list[int]]:
    files = sorted(Path(path).rglob("*")) if Path(path).is_dir() else [Path(path)]
    tok = None
    docs = []
    for f in files:
        if f.suffix not in (".jsonl", ".txt"):
            continue
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.suffix == ".jsonl" \
            else [{"text": f.read_text()}]
        for row in rows:
            if "token_ids" in row:
                docs.append([int(t) for t in row["token_ids"]])
                continue
            if tok is None:
                if tokenizer is None:
                    raise ValueError(f"rasd.tokenizer: text corpus {f} needs a local tokenizer folder")
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(tokenizer)
            docs.append(tok(row["text"], add_special_tokens=False)["input_ids"])
    return docs


# ---------------------------------------------------------------------- trees
def retrieval_tree(cands: list[list[int]]) -> DraftTree:
    """Trie of candidates; a node's score = fraction of candidates passing through it."""
    tokens, parents, counts = [], [], []
    children: dict[tuple[int, int], int] = {}
    for c in cands:
        node = -1
        for t in c:
            key = (node, int(t))
            if key not in children:
                children[key] = len(tokens)
                tokens.append(int(t))
                parents.append(node)
                counts.append(0)
            node = children[key]
            counts[node] += 1
    total = max(len(cands), 1)
    return DraftTree(np.asarray(tokens, np.int64), np.asarray(parents, np.int64),
                     scores=np.asarray(counts, np.float32) / total)


def retrieval_chain(cands: list[list[int]], cap: int) -> DraftTree:
    """``retrieval_tree(cands).prune(cap).chain_of_best()`` on plain lists: where the engine
    verifies chains, this runs for every drafting request in every step, and the three
    intermediate trees cost more than the retrieval itself."""
    tokens, parents, counts = [], [], []
    children: dict[tuple[int, int], int] = {}
    for c in cands:
        node = -1
        for t in c:
            key = (node, int(t))
            nxt = children.get(key)
            if nxt is None:
                nxt = children[key] = len(tokens)
                tokens.append(int(t))
                parents.append(node)
                counts.append(0)
            counts[nxt] += 1
            node = nxt
    if not tokens:
        return DraftTree.empty()
    scores = (np.asarray(counts, np.float32) / max(len(cands), 1)).tolist()  # float32, as retrieval_tree
    kids: dict[int, list[int]] = {}
    for i, p in enumerate(parents):
        kids.setdefault(p, []).append(i)
    # prune: best-first by (score, index), parents first
    if len(tokens) <= cap:
        kept = list(range(len(tokens)))
    else:
        heap = [(-scores[c], c) for c in kids[-1]]
        heapq.heapify(heap)
        kept = []
        while heap and len(kept) < cap:
            _, i = heapq.heappop(heap)
            kept.append(i)
            for c in kids.get(i, ()):
                heapq.heappush(heap, (-scores[c], c))
        kept.sort()
    # best path: the largest sum of scores, then the deeper node, then the lower index
    acc, depth, best = {}, {}, None
    for i in kept:
        p = parents[i]
        acc[i] = scores[i] + (acc[p] if p >= 0 else 0.0)
        depth[i] = depth[p] + 1 if p >= 0 else 1
        if best is None or (acc[i], depth[i]) > (acc[best], depth[best]):
            best = i
    path = []
    while best >= 0:
        path.append(best)
        best = parents[best]
    path.reverse()
    return DraftTree.chain([tokens[i] for i in path], scores=np.asarray([scores[i] for i in path], np.float32))


def prune_retrieval(ret: DraftTree, drafter: DraftTree | None, top_k: int, threshold: float) -> DraftTree:
    """Drafter-guided pruning of whole root branches, or frequency pruning without a drafter."""
    if ret.num_nodes == 0 or (drafter is None and threshold <= 0):
        return ret
    if drafter is not None and drafter.num_nodes:
        kids = drafter.children(-1)
        s = drafter.scores if drafter.scores is not None else np.ones(drafter.num_nodes, np.float32)
        top = {int(drafter.tokens[c]) for c in sorted(kids, key=lambda c: (-s[c], c))[:top_k]}
        # a branch survives if the drafter ranks its first token in its top-k, or (with a
        # threshold set) if enough retrieved candidates agree on it
        root_ok = {int(c) for c in ret.children(-1)
                   if int(ret.tokens[c]) in top or (threshold > 0 and ret.scores[c] >= threshold)}
        keep = [i for i in range(ret.num_nodes) if ret.path_to(i)[0] in root_ok]
    else:
        keep = [i for i in range(ret.num_nodes) if ret.scores[i] >= threshold]  # scores fall along paths
    return ret.subtree(keep)


class RasdProposer(Proposer):
    name = "rasd"
    Options = RasdOptions

    def __init__(self, options: RasdOptions, num_speculative_tokens: int):
        super().__init__(options, num_speculative_tokens)
        self.corpus = None
        if options.corpus:
            self.corpus = CorpusIndex(load_corpus(options.corpus, options.tokenizer), options.min_ngram, options.max_ngram)
        self.drafter = None
        if options.fuse_with:
            from specplug.proposers import get_proposer_class

            cls = get_proposer_class(options.fuse_with)
            self.drafter = cls(cls.Options(), num_speculative_tokens)

    def start(self, req_id, prompt_ids, tenant=None):
        if self.drafter:
            self.drafter.start(req_id, prompt_ids, tenant)

    def observe(self, req_id, accepted_ids, info: VerifyInfo | None = None):
        if self.drafter:
            self.drafter.observe(req_id, accepted_ids, info)

    def stop(self, req_id):
        if self.drafter:
            self.drafter.stop(req_id)

    def propose(self, batch: list[ReqState], budget: list[Budget]) -> list[DraftTree]:
        o = self.options
        drafts = self.drafter.propose(batch, [Budget(b.max_nodes, True) for b in budget]) if self.drafter else [None] * len(batch)
        out = []
        for r, b, d in zip(batch, budget, drafts):
            cap = min(b.max_nodes, self.num_speculative_tokens)
            ctx = np.asarray(r.token_ids, np.int64)
            # a tree pruned to cap nodes is at most cap deep, so longer continuations cannot matter
            # (a fused drafter tree is merged by prefix: keep them whole there)
            max_len = o.max_continuation if d is not None else min(o.max_continuation, cap)
            cands = context_candidates(ctx, o.min_ngram, o.max_ngram, o.max_candidates, max_len)
            if self.corpus is not None:
                cands += self.corpus.candidates(ctx, o.min_ngram, o.max_ngram, o.max_candidates, max_len)
            if d is None and not b.tree and o.prune_threshold <= 0:
                out.append(retrieval_chain(cands, cap))
                continue
            ret = prune_retrieval(retrieval_tree(cands), d, o.prune_top_k, o.prune_threshold)
            fused = d.merge(ret) if d is not None and d.num_nodes else ret
            tree = fused.prune(cap)
            if not b.tree and tree.num_nodes:
                tree = tree.chain_of_best()
            out.append(tree)
        return out
