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

import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from specplug.proposers.base import Budget, Proposer, ProposerOptions, ReqState, VerifyInfo
from specplug.tree import DraftTree, best_first, best_scored_path, graft_into


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
def candidate_trie(cands: list[list[int]]) -> tuple[list[int], list[int], list[float]]:
    """The candidates merged into a trie (tokens, parents, in order of first appearance); a node's
    score is the fraction of candidates passing through it (float32, as scores are stored)."""
    tokens, parents, counts = [], [], []
    index: dict[tuple[int, int], int] = {}
    for c in cands:
        node = -1
        for t in c:
            nxt = index.get((node, t))
            if nxt is None:
                nxt = index[(node, t)] = len(tokens)
                tokens.append(t)
                parents.append(node)
                counts.append(0)
            counts[nxt] += 1
            node = nxt
    return tokens, parents, (np.asarray(counts, np.float32) / max(len(cands), 1)).tolist()


def retrieval_tree(cands: list[list[int]]) -> DraftTree:
    """The candidate trie as a DraftTree."""
    tokens, parents, scores = candidate_trie(cands)
    return DraftTree(np.asarray(tokens, np.int64), np.asarray(parents, np.int64), scores=np.asarray(scores, np.float32))


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


def fused_draft(drafter: DraftTree | None, cands: list[list[int]], cap: int, top_k: int, threshold: float,
                chain: bool) -> DraftTree:
    """``prune_retrieval(retrieval_tree(cands), drafter, ...)``, merged into ``drafter``
    (``DraftTree.merge``), pruned to ``cap`` nodes and, if ``chain``, cut to its best path: the same
    tree, built in one pass on plain lists. This runs for every drafting request in every engine
    step, and the five intermediate DraftTrees cost more than the retrieval itself
    (tests/test_rasd.py checks it against that composition)."""
    r_tok, r_par, r_score = candidate_trie(cands)
    use_drafter = drafter is not None and drafter.num_nodes > 0
    # prune_retrieval: whole root branches by the drafter's top-k roots, or nodes by frequency
    if use_drafter:
        tokens, parents = drafter.tokens.tolist(), drafter.parents.tolist()
        given = drafter.scores.tolist() if drafter.scores is not None else None
        scores = given if given is not None else [0.0] * len(tokens)  # merge counts missing scores as 0
        rank = given if given is not None else [1.0] * len(tokens)  # and pruning ranks them as equal
        roots = sorted((i for i, p in enumerate(parents) if p < 0), key=lambda i: (-rank[i], i))
        top = {tokens[i] for i in roots[:top_k]}
        # a root branch goes unless it starts with a top-k token or enough candidates agree on it
        # (its nodes go with it: graft_into drops a node whose parent was dropped)
        drop = [p < 0 and not (r_tok[j] in top or (threshold > 0 and r_score[j] >= threshold))
                for j, p in enumerate(r_par)]
    else:
        tokens, parents, scores = [], [], []
        drop = [s < threshold for s in r_score]  # scores fall along paths
    # DraftTree.merge: retrieval nodes matched to the drafter's by (parent, token), else grafted
    graft_into(tokens, parents, scores, r_tok, r_par, r_score, drop=drop)
    n = len(tokens)
    if n == 0:
        return DraftTree.empty()
    kept = range(n) if n <= cap else best_first(parents, scores, cap)  # DraftTree.prune
    if chain:  # DraftTree.chain_of_best
        path = best_scored_path(parents, scores, kept)
        return DraftTree.chain([tokens[i] for i in path], scores=np.asarray([scores[i] for i in path], np.float32))
    new = {old: k for k, old in enumerate(kept)}
    return DraftTree._derived(np.asarray([tokens[i] for i in kept], np.int64),
                              np.asarray([new[parents[i]] if parents[i] >= 0 else -1 for i in kept], np.int64),
                              draft_probs=None, deterministic=True,
                              scores=np.asarray([scores[i] for i in kept], np.float32))


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
            out.append(fused_draft(d, cands, cap, o.prune_top_k, o.prune_threshold, chain=not b.tree))
        return out
