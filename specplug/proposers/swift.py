"""SWIFT (Xia et al., arXiv 2410.06916): self-speculation with the target's own weights, some
attention and MLP sub-layers skipped, the skip set searched on the fly (reference/methods.md §5).

The drafter is the target model with n = int(2 (L - 2) * ``skip_ratio``) of its sub-layers
skipped; the first and last layers never are. Each step, for every request:

1. its cache (the *full* model's keys and values of the committed tokens before the root, in
   specplug/proposers/layer_skip_lm.py) is cropped to the longest prefix still committed and
   extended by the newly verified tokens' keys and values: read from the engine's own KV cache
   where the adapter offers a reader (``bind_target_kv``; vLLM: engines/vllm/target_kv.py), else
   computed by feeding those tokens through the full model;
2. the skipped model drafts greedily from the root, stopping early after the first token whose
   top-1 probability falls below ``stop_threshold`` (confidence-aware drafting), up to the budget;
   the step's requests draft together, one batched forward per draft position.

Skip-set search (phase 1 of the paper), one candidate per engine step until it stops:
- candidates: a random n-subset, or every ``bayes_interval``-th one the top n coordinates of a
  point suggested by Bayesian optimisation (``bayesian-optimization``: a GP over [0, 1]^{2(L-2)},
  fed every scored candidate as its 0/1 indicator);
- score ("matchness"): one teacher-forced forward of the skipped model over the last
  ``context_window`` generated tokens, against the full cache before them: the fraction of
  positions where its argmax is the token that came next;
- a candidate replaces the current set when it scores higher; the search stops at
  ``max_score`` (confidence early stop), after ``max_tolerance_iter`` candidates without gain
  or ``max_opt_iter`` in all. The result is saved under the (model, ``task``) key in
  ``cache_file`` and reused by later engines with the same key (no search).

Where the engine verifies trees (``Budget.tree``), the draft is the paper's *caterpillar*: the
argmax chain as the spine and, at each depth, the skipped model's next most likely tokens as leaf
siblings of the spine node there, how many set by the spine token's confidence c (phase 2 of the
paper, its greedy column: 3 candidates at depth d if c > 0.95, 5 if c > 0.8, 8 if c > 0.5, else
10, the spine token included). They come free with the logits the chain was drafted from: no
extra forward. Each node is scored by its path probability under the skipped model, and the tree
is pruned best-first to the node budget (a sibling never scores above its spine node, so the
spine is kept first) and to ``sibling_min_prob``.

Drafts are deterministic (argmax chains and top-k siblings) and verified by matching, which is
exact also when sampling (sample-and-match); the search only changes which tokens are proposed.
The drafting model is the engine's own model, its modules called one sub-layer at a time
(``bind_target_model``; vLLM: engines/vllm/swift_model.py), or where the adapter cannot offer
that, a copy of the weights loaded from the target's folder (layer_skip_lm.py). Either way
the drafter keeps a cache of its own: the engine's KV cache is only ever read, and nothing the
drafter computes reaches it. The first read is checked against a recomputation (logged); a
reader whose keys and values disagree is dropped, loudly.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pydantic import Field, field_validator

from specplug.proposers.base import Budget, Proposer, ProposerOptions, ReqState, VerifyInfo
from specplug.proposers.drafters import DrafterError, TargetInfo, common_prefix
from specplug.tree import DraftTree

logger = logging.getLogger("vllm.specplug")


class SkipSet(ProposerOptions):
    attention: list[int] = Field(default_factory=list, description="layers whose attention is skipped")
    mlp: list[int] = Field(default_factory=list, description="layers whose MLP is skipped")


class SwiftOptions(ProposerOptions):
    target_model: str | None = Field(None, description="folder of the target (None: the folder the engine serves); its weights are loaded only where the engine's own modules cannot be used")
    skip_ratio: float = Field(0.45, gt=0.0, lt=1.0, description="fraction of the 2(L-2) skippable sub-layers skipped")
    skip_set: SkipSet | None = Field(None, description="a fixed skip set (no search), e.g. one found earlier")
    context_window: int = Field(32, ge=4, le=1024, description="generated tokens the matchness is scored on")
    max_score: float = Field(0.95, gt=0.0, le=1.0, description="stop searching once a set scores this")
    bayes_interval: int = Field(25, ge=1, description="every n-th candidate comes from Bayesian optimisation")
    max_opt_iter: int = Field(1000, ge=1, description="candidates scored at most")
    max_tolerance_iter: int = Field(300, ge=1, description="stop after this many candidates without improvement")
    stop_threshold: float = Field(0.8, ge=0.0, le=1.0, description="stop drafting after a token whose top-1 probability is lower")
    task: str = Field("default", description="key of the saved skip set, with the model folder")
    cache_file: str | None = Field(None, description="JSON file of skip sets per (model, task); None: not saved")
    seed: int = Field(0, description="seed of the random and Bayesian search")
    sibling_min_prob: float = Field(0.02, ge=0.0, le=1.0, description="trees only: drop siblings whose path probability under the skipped model is lower")

    @field_validator("cache_file")
    @classmethod
    def _expand(cls, v):
        return None if v is None else str(Path(v).expanduser())


class SkipSearch:
    """The on-the-fly search over skip sets (coordinates 0..L-3: attention of layers 1..L-2;
    L-2..2L-5: their MLPs)."""

    def __init__(self, num_layers: int, ratio: float, o: SwiftOptions):
        self.dims = 2 * (num_layers - 2)
        self.n = max(1, int(self.dims * ratio))
        self.o = o
        self.rng = np.random.default_rng(o.seed)
        odd = [i - 1 for i in range(1, num_layers - 1, 2)]  # the paper's start: odd layers, both sub-layers
        start = (odd + [c + num_layers - 2 for c in odd])[: self.n]
        self.current = frozenset(start)
        self.best = -1.0
        self.iters = 0
        self.tolerance = 0
        self.done = False
        self._bo = None

    def coords_to_layers(self, coords) -> tuple[frozenset, frozenset]:
        half = self.dims // 2
        return (frozenset(c + 1 for c in coords if c < half), frozenset(c - half + 1 for c in coords if c >= half))

    def layers_to_coords(self, attention, mlp) -> frozenset:
        half = self.dims // 2
        return frozenset([a - 1 for a in attention] + [m - 1 + half for m in mlp])

    def _optimizer(self):
        if self._bo is None:
            from bayes_opt import BayesianOptimization

            self._bo = BayesianOptimization(f=None, pbounds={f"x{i:03d}": (0.0, 1.0) for i in range(self.dims)},
                                            random_state=self.o.seed, verbose=0, allow_duplicate_points=True)
        return self._bo

    def candidate(self) -> frozenset:
        if self.iters == 0:
            return self.current  # score the starting set first
        if self.iters % self.o.bayes_interval == 0:
            x = self._optimizer().suggest()
            values = np.array([x[f"x{i:03d}"] for i in range(self.dims)])
            return frozenset(int(i) for i in np.argsort(-values, kind="stable")[: self.n])
        return frozenset(int(i) for i in self.rng.choice(self.dims, self.n, replace=False))

    def record(self, cand: frozenset, score: float) -> None:
        self._optimizer().register(params={f"x{i:03d}": float(i in cand) for i in range(self.dims)}, target=score)
        self.iters += 1
        if score > self.best:
            self.best, self.current, self.tolerance = score, cand, 0
        else:
            self.tolerance += 1
        if self.best >= self.o.max_score or self.tolerance > self.o.max_tolerance_iter or self.iters >= self.o.max_opt_iter:
            self.done = True


@dataclass
class _Chain:
    """One request's draft chain while it is being drafted."""

    index: int  # in the batch
    cache: object  # its LayerCache: the committed tokens before the root, then this chain
    root_position: int
    cap: int
    root: int
    tree: bool = False  # the engine verifies a tree: keep each position's runners-up (caterpillar)
    tokens: list[int] = field(default_factory=list)
    conf: list[float] = field(default_factory=list)  # top-1 probability of each token
    alternatives: list[list[tuple[float, int]]] = field(default_factory=list)  # per position, next best (p, token)

    @property
    def last(self) -> int:
        return self.tokens[-1] if self.tokens else self.root


class SwiftProposer(Proposer):
    name = "swift"
    Options = SwiftOptions
    reads_target_kv = True
    uses_target_model = True

    def __init__(self, options: SwiftOptions, num_speculative_tokens: int):
        super().__init__(options, num_speculative_tokens)
        if options.skip_set is None:
            try:
                import bayes_opt  # noqa: F401
            except ImportError:
                raise DrafterError("swift: the skip-set search needs bayesian-optimization "
                                   "(pip install 'specplug[swift]'), or give swift.skip_set") from None
        self.lm = None  # a SkipDecoder: the engine's own modules (bind_target_model) or a copy, loaded on first use
        self.folder: Path | None = None
        self.search: SkipSearch | None = None
        self._caches: dict[str, tuple[object, list[int]]] = {}  # req_id -> (full-model LayerCache, its tokens)
        self.target_kv = None  # the engine's keys and values (bind_target_kv), checked at the first read
        self._kv_checked = False
        # SPECPLUG_CHECK_TARGET_KV=1: check every read, not only the first (tests; costs a full forward each)
        self._check_every_read = os.environ.get("SPECPLUG_CHECK_TARGET_KV") == "1"
        self._checked_reads = 0
        if options.target_model is not None:
            self._load(Path(options.target_model).expanduser())

    # ------------------------------------------------------------------ model and skip set
    def bind_target(self, target: TargetInfo) -> None:
        if self.folder is None:
            if target.model_path is None or not Path(target.model_path).is_dir():
                raise DrafterError(f"swift.target_model: the engine's target {target.model_path!r} is not a local "
                                   "folder; give the folder of its weights as swift.target_model")
            self._load(Path(target.model_path))
        if self.vocab_size != target.vocab_size:
            raise DrafterError(f"swift.target_model: {self.folder} has {self.vocab_size} vocabulary rows but the "
                               f"served target {target.model_path} has {target.vocab_size}: not the same model")

    def bind_target_model(self, decoder) -> None:
        """Draft with the engine's own modules of the served model (a ``SkipDecoder``): no copy."""
        if (decoder.num_layers, decoder.vocab_size) != (self.num_layers, self.vocab_size):
            raise DrafterError(f"swift: the served model has {decoder.num_layers} layers and {decoder.vocab_size} "
                               f"vocabulary rows, {self.folder} {self.num_layers} and {self.vocab_size}")
        self.lm = decoder

    def _decoder(self):
        """The drafting model: the engine's (bind_target_model), else a copy loaded from the folder."""
        if self.lm is None:
            from specplug.proposers.layer_skip_lm import LayerSkipLM

            if self.folder is None:
                raise DrafterError("swift: no target weights: the engine adapter did not call bind_target and "
                                   "swift.target_model is not set")
            self.lm = LayerSkipLM(self.folder)
            logger.info("specplug: swift drafts with its own fp32 copy of %s", self.folder)
        return self.lm

    def _load(self, folder: Path) -> None:
        from specplug.proposers.layer_skip_lm import LayerSkipError, LayerSkipLM

        if not folder.is_dir():
            raise DrafterError(f"swift.target_model: folder not found: {str(folder)!r}")
        try:
            cfg = LayerSkipLM.read_config(folder)
        except LayerSkipError as e:
            raise DrafterError(str(e)) from None
        self.folder = folder
        self.num_layers, self.vocab_size = int(cfg["num_hidden_layers"]), int(cfg["vocab_size"])
        L = self.num_layers
        if L < 3:
            raise DrafterError(f"swift.target_model: {folder} has {L} layers; layer skipping needs at least 3")
        self.search = SkipSearch(L, self.options.skip_ratio, self.options)
        fixed = self.options.skip_set or self._saved()
        if fixed is not None:
            bad = [i for i in (*fixed.attention, *fixed.mlp) if not 0 < i < L - 1]
            if bad:
                raise DrafterError(f"swift.skip_set: layers {bad} cannot be skipped (1..{L - 2}: the first and "
                                   "last layers never are)")
            self.search.current = self.search.layers_to_coords(fixed.attention, fixed.mlp)
            self.search.done = True
        logger.info("specplug: swift on %s (%d layers): %s", folder, L,
                    "fixed skip set " + str(self.skip_layers()) if self.search.done else
                    f"searching a skip set of {self.search.n} of {self.search.dims} sub-layers")

    def _key(self) -> str:
        return f"{self.folder.resolve()}::{self.options.task}"

    def _saved(self) -> SkipSet | None:
        path = self.options.cache_file
        if path is None or not Path(path).is_file():
            return None
        entry = json.loads(Path(path).read_text()).get(self._key())
        return None if entry is None else SkipSet(attention=entry["attention"], mlp=entry["mlp"])

    def _save(self) -> None:
        path = self.options.cache_file
        attention, mlp = self.skip_layers()
        logger.info("specplug: swift skip set found after %d candidates (matchness %.3f): attention %s, mlp %s",
                    self.search.iters, self.search.best, attention, mlp)
        if path is None:
            return
        p = Path(path)
        data = json.loads(p.read_text()) if p.is_file() else {}
        data[self._key()] = {"attention": attention, "mlp": mlp, "score": self.search.best,
                             "candidates": self.search.iters}
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")

    def skip_layers(self) -> tuple[list[int], list[int]]:
        attention, mlp = self.search.coords_to_layers(self.search.current)
        return sorted(attention), sorted(mlp)

    def bind_target_kv(self, reader) -> None:
        if reader.num_layers != self.num_layers:
            logger.warning("specplug: swift: the engine's KV cache has %d attention layers, %s has %d; "
                           "recomputing keys and values instead", reader.num_layers, self.folder, self.num_layers)
            return
        self.target_kv = reader

    # ------------------------------------------------------------------ lifecycle
    def start(self, req_id: str, prompt_ids, tenant: str | None = None) -> None:
        self.stop(req_id)

    def stop(self, req_id: str) -> None:
        self._caches.pop(req_id, None)

    def observe(self, req_id: str, accepted_ids, info: VerifyInfo | None = None) -> None:
        pass  # the next propose() sees the committed tokens and crops the cache to them

    # ------------------------------------------------------------------ drafting
    def _full_cache(self, req_id: str, tokens: list[int]):
        """The full model's cache (a LayerCache) of ``tokens`` (everything before the root)."""
        cache, cached = self._caches.get(req_id, (None, []))
        if cache is None:
            cache, cached = self._decoder().empty_cache(), []
        keep = common_prefix(cached, tokens)
        self.lm.crop(cache, keep)
        if keep < len(tokens):
            read = self.target_kv.read(req_id, keep, len(tokens)) if self.target_kv is not None else None
            if read is not None and (not self._kv_checked or self._check_every_read):
                read = self._check_target_kv(read, tokens, keep)
            if read is not None:
                cache.append(read)
            else:
                self.lm.forward(tokens[keep:], keep, cache, logits=False)
        self._caches[req_id] = (cache, list(tokens))
        return cache

    def _check_target_kv(self, read, tokens: list[int], keep: int):
        """A read (the first, or every one under SPECPLUG_CHECK_TARGET_KV=1) against the full model's own keys and values of the same positions
        (relative error per layer): a reader that disagrees is dropped, loudly."""
        own = self.lm.empty_cache()
        self.lm.forward(tokens, 0, own, logits=False)
        err = max(float(torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want).clamp_min(1e-12))
                  for i, (k, v) in enumerate(read)
                  for got, want in ((k, own.k[i][:, keep:own.length]), (v, own.v[i][:, keep:own.length])))
        # 16-bit: rounding compounds over the layers (5e-2 on 30-layer SmolLM2 in bf16); a misread
        # layout gives errors of order 1
        tol = 1e-3 if self.target_kv.dtype == torch.float32 else 0.25
        self._kv_checked = True
        if err > tol:
            logger.error("specplug: swift: the keys and values read from the engine's KV cache differ from a "
                         "recomputation by %.2g (tolerance %.0e for %s); not reading them again", err, tol,
                         self.target_kv.dtype)
            self.target_kv = None
            return None
        self._checked_reads += 1
        if self._checked_reads in (1, 100, 1000):
            logger.info("specplug: swift: the keys and values read from the engine's KV cache match a recomputation "
                        "(relative error %.1e over %d layers and %d positions; %d reads checked)", err, len(read),
                        len(tokens) - keep, self._checked_reads)
        return read

    def matchness(self, cache, tokens: list[int], coords) -> float:
        """Teacher-forced agreement of the skipped model with the last ``context_window`` tokens."""
        W = self.options.context_window
        start = len(tokens) - W - 1
        attention, mlp = self.search.coords_to_layers(coords)
        cached = cache.length
        logits = self.lm.forward(tokens[start:-1], start, cache, attention, mlp, visible=start)
        self.lm.crop(cache, cached)  # the cache as it was
        return float((logits.argmax(-1) == torch.tensor(tokens[start + 1 :])).float().mean())

    def _maybe_search(self, batch: list[ReqState]) -> None:
        """Score one candidate per step, on the first request with enough generated tokens."""
        W = self.options.context_window
        for r in batch:
            if len(r.token_ids) - r.num_prompt_tokens < W + 1:
                continue
            tokens = [int(t) for t in r.token_ids]
            cache = self._full_cache(r.req_id, tokens[:-1])  # what drafting keeps cached too
            cand = self.search.candidate()
            self.search.record(cand, self.matchness(cache, tokens, cand))
            if self.search.done:
                self._save()
            return

    def propose(self, batch: list[ReqState], budget: list[Budget]) -> list[DraftTree]:
        self._decoder()
        if not self.search.done:
            self._maybe_search(batch)
        attention, mlp = self.search.coords_to_layers(self.search.current)
        out = [DraftTree.empty()] * len(batch)
        chains = []
        for idx, (r, b) in enumerate(zip(batch, budget)):
            tokens = [int(t) for t in r.token_ids]
            cap = min(b.max_nodes, self.num_speculative_tokens, self.lm.max_positions - len(tokens))
            if cap > 0:
                chains.append(_Chain(idx, self._full_cache(r.req_id, tokens[:-1]), len(tokens) - 1, cap, tokens[-1],
                                     tree=b.tree))
        trees = any(c.tree for c in chains)
        # Every request's chain advances one token per forward, all of them in one batched
        # forward (the weights are read once per position for the whole batch); a chain leaves
        # the batch after the first token whose top-1 probability falls below stop_threshold
        # (that token is still sent: its forward is paid for, and verifying it costs far less).
        active = chains
        while active:
            logits = self.lm.forward_batch([c.last for c in active], [c.cache for c in active], attention, mlp)
            if trees:  # one top-k for the batch; the first column is the chain's token
                p, t = logits.softmax(-1).topk(min(_TOP_K, logits.shape[-1]), dim=-1)
                p, t = p.tolist(), t.tolist()
                for c, pj, tj in zip(active, p, t):
                    c.tokens.append(int(tj[0])), c.conf.append(float(pj[0]))
                    if c.tree:
                        c.alternatives.append(list(zip(pj[1:], tj[1:])))
            else:
                p, t = logits.softmax(-1).max(-1)
                for c, pj, tj in zip(active, p.tolist(), t.tolist()):
                    c.tokens.append(int(tj)), c.conf.append(float(pj))
            active = [c for c in active if c.conf[-1] >= self.options.stop_threshold and len(c.tokens) < c.cap]
        for c in chains:
            self.lm.crop(c.cache, c.root_position)  # the draft tokens' keys and values go again
            out[c.index] = (self._caterpillar(c) if c.tree else
                            DraftTree.chain(c.tokens, scores=np.asarray(c.conf, np.float32)))
        return out

    def _caterpillar(self, c: _Chain) -> DraftTree:
        """The chain as the spine, each depth's runners-up as leaf siblings of its spine node
        (module doc), scored by path probability and pruned best-first to the budget."""
        tokens, parents, scores = [], [], []
        parent, path = -1, 1.0  # the spine node above this depth, and its path probability
        for token, conf, alternatives in zip(c.tokens, c.conf, c.alternatives):
            spine = len(tokens)
            tokens.append(token), parents.append(parent), scores.append(path * conf)
            for p, alt in alternatives[: _candidates(conf) - 1]:
                if path * p < self.options.sibling_min_prob:
                    break  # sorted: the rest are less likely still
                tokens.append(int(alt)), parents.append(parent), scores.append(path * p)
            parent, path = spine, path * conf
        return DraftTree(np.asarray(tokens), np.asarray(parents), scores=np.asarray(scores, np.float32)).prune(c.cap)


_TOP_K = 10  # the most candidates the caterpillar takes at one depth (_candidates)


def _candidates(conf: float) -> int:
    """How many tokens the caterpillar takes at a depth whose top-1 probability is ``conf``, the
    spine token included (the paper's greedy column, reference/methods.md §5)."""
    return 3 if conf > 0.95 else 5 if conf > 0.8 else 8 if conf > 0.5 else _TOP_K
