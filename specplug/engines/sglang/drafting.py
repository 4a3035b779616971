"""The draft source behind specplug's SGLang worker (engine-free: no sglang import).

SGLang's NGRAM worker asks, once per decode round, for a fixed-width tree per request in the
NGRAM layout (layout.py). This class turns each request's full token history into that layout
with a specplug proposer, keeping the proposer's per-request lifecycle:
- a request id seen for the first time -> ``proposer.start`` with its prompt;
- tokens that appeared since the last round (accepted drafts + bonus) -> ``proposer.observe``;
- ids SGLang reports gone (``erase``) -> ``proposer.stop``.
Committed tokens are read off the history rather than off verify results, so the same code is
right in SGLang's synchronous and overlap modes (overlap splices the last round's accepted tokens
into the history before drafting).
"""

from __future__ import annotations

import logging

import numpy as np

from specplug.config import SpecplugConfig
from specplug.engines.sglang.layout import layout_batch
from specplug.proposers.base import Budget, ReqState, VerifyInfo
from specplug.tree import DraftTree

logger = logging.getLogger("sglang.specplug")
_NO_TREE = DraftTree.empty()  # SGLang's result reaches the proposer as committed tokens only


class DraftSource:
    def __init__(self, config: SpecplugConfig, width: int):
        if width < 2:
            raise ValueError(f"--speculative-num-draft-tokens must be >= 2 for drafting (got {width})")
        self.config = config
        self.width = width
        self.proposer = config.build_proposer()
        self._seen: dict[str, int] = {}  # request id -> history length the proposer has seen
        self._failed_once = False

    def draft(self, req_ids, histories, num_prompt_tokens) -> tuple[np.ndarray, np.ndarray]:
        """``histories[i]``: prompt + output of request i (the last token is node 0).
        Returns ``(tokens int64[bs*width], mask int64[bs*width*width])``."""
        batch, roots = [], []
        for rid, hist, n_prompt in zip(req_ids, histories, num_prompt_tokens):
            hist = np.asarray(hist, dtype=np.int64)
            self._sync(rid, hist, int(n_prompt))
            batch.append(ReqState(rid, hist, int(n_prompt)))
            roots.append(int(hist[-1]))
        budgets = [Budget(self.width - 1, tree=self.config.tree)] * len(batch)
        try:
            trees = self.proposer.propose(batch, budgets) if batch else []
        except Exception:  # drafting is an optimisation: an empty tree verifies the bonus token only
            if not self._failed_once:
                logger.exception("specplug: %s proposer raised; drafting nothing this round "
                                 "(further failures are not logged)", self.config.method)
                self._failed_once = True
            trees = [_NO_TREE] * len(batch)
        trees = [self._fit(t) for t in trees]
        return layout_batch(roots, trees, self.width)

    def _fit(self, tree: DraftTree) -> DraftTree:
        if not self.config.tree:
            return DraftTree.chain(tree.chain_tokens()[: self.width - 1])
        if tree.num_nodes > self.width - 1:  # parents-first: a prefix of the nodes is a tree
            return tree.subtree(range(self.width - 1))
        return tree

    def _sync(self, rid: str, hist: np.ndarray, n_prompt: int) -> None:
        seen = self._seen.get(rid)
        if seen is not None and len(hist) < seen:  # history shrank (retracted, or an id reused)
            self.proposer.stop(rid)
            seen = None
        if seen is None:
            self.proposer.start(rid, hist[:n_prompt].tolist())
            seen = n_prompt
        if len(hist) > seen:
            root = int(hist[seen - 1]) if seen > 0 else None
            self.proposer.observe(rid, hist[seen:].tolist(), VerifyInfo(_NO_TREE, [], None, root_token=root))
        self._seen[rid] = len(hist)

    def erase(self, req_ids) -> None:
        for rid in req_ids:
            if self._seen.pop(rid, None) is not None:
                self.proposer.stop(rid)

    def reset(self) -> None:
        self.erase(list(self._seen))
